"""When progress bars show: ``progress=None`` (every public function's default) draws a bar
only where stderr is a terminal. In a log file or CI output a redrawn bar is thousands of
lines; ``progress=True`` forces it, ``False`` silences it."""

from __future__ import annotations

import sys


def bar_disabled(progress: bool | None) -> bool:
    """tqdm's ``disable=`` for a ``progress`` argument."""
    if progress is None:
        return not sys.stderr.isatty()
    return not progress
