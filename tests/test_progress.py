"""The estimate of the time left that `lostprune run` shows, from the store's task rows."""

import json

import pytest

from lostprune.experiments.progress import describe_left, format_seconds, time_left


def task(key, kind, status, seconds=None, started=None, chain=None):
    payload = json.dumps({"chain": chain} if chain else {})
    return {
        "key": key,
        "kind": kind,
        "status": status,
        "seconds": seconds,
        "started": started,
        "payload": payload,
    }


def test_time_left_counts_each_kind_at_its_own_pace():
    now = 1000.0
    rows = [
        task("parent", "train", "done", seconds=300),
        task("reference", "train", "running", started=now - 100),  # 200 s of 300 left
        task("chain/wt", "chain", "done", seconds=90),  # 3 steps: 30 s a step
        *[task(f"wt/{i}", "network", "done", chain="chain/wt") for i in range(3)],
        task("chain/ft", "chain", "running", started=now - 50),  # no step published yet
        *[task(f"ft/{i}", "network", "pending", chain="chain/ft") for i in range(3)],  # 3 × 30 s
        task("eval/parent", "evaluate", "done", seconds=4),
        *[task(f"eval/{i}", "evaluate", "pending") for i in range(5)],  # 5 × 4 s
    ]
    assert time_left(rows, now) == (pytest.approx(200 + 90 + 20), {})
    assert time_left(rows, now, workers=2) == (pytest.approx((200 + 90 + 20) / 2), {})
    # a running chain that published one network in 40 s also times steps: (90 + 40) / 4 per step
    rows[6] = task("chain/ft", "chain", "running", started=now - 40)
    rows[7] = task("ft/0", "network", "done", chain="chain/ft")
    assert time_left(rows, now) == (pytest.approx(200 + 2 * 130 / 4 + 20), {})


def test_time_left_waits_for_a_first_example_of_each_kind():
    rows = [task("parent", "train", "running", started=0.0), task("eval/parent", "evaluate", "pending")]
    assert time_left(rows, 10.0)[1] == {"evaluate": 1, "train": 1}
    assert format_seconds(75) == "1:15" and format_seconds(3 * 3600 + 61) == "3:01:01"
    # failed work is not waited for
    rows = [
        task("parent", "train", "failed"),
        task("chain/wt", "chain", "failed"),
        task("wt/0", "network", "pending", chain="chain/wt"),
    ]
    assert time_left(rows, 10.0) == (0.0, {})


def test_untimed_work_is_counted_beside_a_lower_bound_not_hidden():
    """While evaluations have no timing yet (chains run first), the line still says how much
    of the work is timed and what is left out, instead of "estimating" for hours."""
    now = 1000.0
    rows = [
        task("chain/wt", "chain", "done", seconds=90),  # 30 s a step
        *[task(f"wt/{i}", "network", "done", chain="chain/wt") for i in range(3)],
        task("chain/ft", "chain", "running", started=now - 10),
        *[task(f"ft/{i}", "network", "pending", chain="chain/ft") for i in range(2)],  # 60 s
        *[task(f"eval/{i}", "evaluate", "pending") for i in range(5)],
        task("features/s0", "features", "pending"),
    ]
    assert time_left(rows, now)[1] == {"evaluate": 5, "features": 1}
    assert describe_left(rows, now) == "left>1:00 (+5 evaluate, 1 features not yet timed)"
    assert describe_left(rows, now, workers=2) == "left>0:30 (+5 evaluate, 1 features not yet timed)"
    rows += [task("eval/parent", "evaluate", "done", seconds=4), task("f", "features", "done", seconds=8)]
    assert describe_left(rows, now) == "left≈1:28"  # 60 + 5 × 4 + 8


def test_progress_in_a_log_file_writes_plain_lines_not_a_redrawn_bar(tmp_path, capsys, monkeypatch):
    import lostprune.experiments.progress as progress
    from lostprune.experiments.store import Store, Task

    store = Store(tmp_path / "r.sqlite")
    store.add_tasks([Task("a", "train"), Task("b", "evaluate", deps=["a"])])
    monkeypatch.setattr(progress, "REFRESH_SECONDS", 3600.0)  # no refresh from the thread
    bar = progress.Progress(store, "study", interactive=False)
    for _ in range(5):  # within LOG_SECONDS of each other: one line
        bar.refresh()
    store.complete(store.claim("w").key)
    bar.close()  # the last state is always written
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 2, err
    assert "study: 0/2 tasks done, running=0, failed=0" in lines[0]
    assert "study: 1/2 tasks done, running=0, failed=0" in lines[1]
    store.close()


def test_a_worker_stops_when_its_runner_dies():
    """exit_with_parent: a process whose parent is gone exits (here the 'parent' pid is one
    that is never its parent, so the watch fires at once)."""
    import subprocess
    import sys
    import time

    code = (
        "import time; from lostprune.experiments.runner import exit_with_parent; "
        "exit_with_parent(-1, poll=0.01); time.sleep(60)"
    )
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], check=False, timeout=50)
    assert done.returncode == 1 and time.monotonic() - start < 50


class _Stream:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty", [True, False])
def test_library_bars_show_by_default_only_in_a_terminal(monkeypatch, tty):
    """prune's bar (the sensitivity pass of a data-informed method) with progress left at its
    default: drawn on a terminal, silent in a log; progress=True draws it anyway."""
    import sys

    import torch

    from lostprune import prune
    from lostprune._progress import bar_disabled
    from lostprune.models import create

    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    assert bar_disabled(None) is (not tty) and bar_disabled(True) is False and bar_disabled(False) is True
    model, data = create("small_cnn", num_classes=10), torch.randn(8, 3, 32, 32)
    prune(model, "sipp", 0.5, data)
    assert ("sensitivities" in stream.text) is tty
    stream.text = ""
    prune(model, "sipp", 0.5, data, progress=True)
    assert "sensitivities" in stream.text
