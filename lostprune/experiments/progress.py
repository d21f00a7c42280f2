"""The progress bar of ``lostprune run``: tasks done, the task in flight, and an estimate of
the time left from what finished tasks of each kind took (tasks differ a lot: training a
parent takes far longer than evaluating a network, so a plain tasks-per-second rate misleads).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping

from .._progress import bar_disabled
from .store import PLACEHOLDER_KIND, Store

REFRESH_SECONDS = 10.0
LOG_SECONDS = 60.0  # where stderr is not a terminal (a log file), one plain line this often


def time_left(tasks: Iterable[Mapping], now: float, workers: int = 1) -> tuple[float, dict[str, int]]:
    """(estimated seconds of the work that can be timed, {kind: tasks left that cannot}): a
    kind of pending work with no finished example yet is counted, not guessed.

    ``tasks``: rows of the store's tasks table. A chain's time is counted per network it
    produces (its placeholder tasks): done chains and running ones that published at least
    one network give the time per step; the steps not yet published are what is left."""
    tasks = list(tasks)
    by_key = {t["key"]: t for t in tasks}
    durations: dict[str, list[float]] = defaultdict(list)
    steps_total, steps_seconds = 0, 0.0
    chain_steps: dict[str, list[Mapping]] = defaultdict(list)
    for t in tasks:
        if t["kind"] == PLACEHOLDER_KIND:
            chain_steps[json.loads(t["payload"])["chain"]].append(t)
    for t in tasks:
        if t["kind"] == "chain":
            steps = chain_steps.get(t["key"], [])
            published = sum(s["status"] == "done" for s in steps)
            if t["status"] == "done" and t["seconds"] and steps:
                steps_total, steps_seconds = steps_total + len(steps), steps_seconds + t["seconds"]
            elif t["status"] == "running" and published and t["started"]:
                steps_total, steps_seconds = steps_total + published, steps_seconds + now - t["started"]
        elif t["kind"] != PLACEHOLDER_KIND and t["status"] == "done" and t["seconds"] is not None:
            durations[t["kind"]].append(t["seconds"])
    mean = {kind: sum(v) / len(v) for kind, v in durations.items()}
    per_step = steps_seconds / steps_total if steps_total else None
    left, untimed = 0.0, defaultdict(int)
    for t in tasks:
        if t["status"] in ("done", "failed"):
            continue
        if t["kind"] == PLACEHOLDER_KIND:
            chain = by_key.get(json.loads(t["payload"])["chain"])
            if chain is not None and chain["status"] == "failed":
                continue
            if per_step is None:
                untimed["network"] += 1
                continue
            left += per_step
        elif t["kind"] != "chain":  # a chain's time is that of its steps
            if t["kind"] not in mean:
                untimed[t["kind"]] += 1
                continue
            elapsed = now - t["started"] if t["status"] == "running" and t["started"] else 0.0
            left += max(mean[t["kind"]] - elapsed, 0.0)
    return left / max(1, workers), dict(untimed)


def describe_left(tasks: Iterable[Mapping], now: float, workers: int = 1) -> str:
    """The time left as the progress line says it: an estimate, or while some kind of work
    has no timing yet, the part that has one as a lower bound and what is not counted."""
    left, untimed = time_left(tasks, now, workers)
    if not untimed:
        return f"left≈{format_seconds(left)}"
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(untimed.items()))
    return f"left>{format_seconds(left)} (+{counts} not yet timed)"


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """A tqdm bar over the experiment's tasks, fed from the store (so it also counts the
    work of other processes), with the task in flight as its description and the estimated
    time left; refreshed at every task and every ``REFRESH_SECONDS`` between them. Where
    stderr is not a terminal (``nohup ... > log``), a redrawn bar would write a line every few
    seconds for hours: there it writes one plain line every ``LOG_SECONDS`` instead."""

    def __init__(
        self, store: Store, name: str, enabled: bool = True, workers: int = 1, interactive: bool | None = None
    ):
        from tqdm.auto import tqdm

        self.store, self.workers, self.enabled, self.name = store, workers, enabled, name
        self.interactive = not bar_disabled(None) if interactive is None else interactive
        self._logged = 0.0
        counts = store.counts()
        self._lock = threading.Lock()
        self.bar = tqdm(
            total=sum(counts.values()),
            initial=counts["done"],
            desc=name,
            unit="task",
            disable=not (enabled and self.interactive),
            dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        self._stop = threading.Event()
        self._thread = None
        if enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        store = Store(self.store.path)  # SQLite connections stay in their thread
        try:
            while not self._stop.wait(REFRESH_SECONDS):
                self.refresh(store)
        finally:
            store.close()

    def refresh(self, store: Store | None = None, final: bool = False) -> None:
        store = store or self.store
        counts = store.counts()
        left = describe_left(store.tasks(), time.time(), self.workers)
        status = f"running={counts['running']}, failed={counts['failed']}, {left}"
        with self._lock:
            self.bar.update(counts["done"] - self.bar.n)
            self.bar.set_postfix_str(status, refresh=True)
            now = time.time()
            if self.enabled and not self.interactive and (now - self._logged >= LOG_SECONDS or final):
                self._logged = now
                print(
                    f"{time.strftime('%H:%M:%S')} {self.name}: {counts['done']}/{sum(counts.values())} tasks done, "
                    f"{status}",
                    file=sys.stderr,
                    flush=True,
                )

    def show(self, task) -> None:
        self.refresh()
        with self._lock:
            self.bar.set_description_str(f"{task.kind} {task.key}", refresh=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.refresh(final=True)
        self.bar.close()
