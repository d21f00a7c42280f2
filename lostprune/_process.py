"""Whether a process is alive: for the experiment store's stale claims and the kernel build's
stale private caches (left by processes that were killed)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """False only when no process ``pid`` exists on this machine (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
