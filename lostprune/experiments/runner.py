"""Run an experiment's task graph with one or more workers, resumably.

    lostprune run CONFIG [--out DIR] [--workers N] [--ray ADDRESS]

Every worker — this process, local processes, or Ray tasks on other machines sharing the
results directory — repeats: claim a ready task, run it, record its outputs. The main
process shows a progress bar with an estimate of the time left (``progress.py``).
Rerunning the same command after an interruption (Ctrl-C, kill -9, a crash) continues where
the store says it stopped.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import threading
import time
import traceback
from pathlib import Path

import torch

from .._threads import physical_cores, set_threads
from ..train import distributed
from .config import ExperimentConfig, load_config
from .environment import Environment
from .plan import build_plan
from .progress import Progress
from .store import Store, open_or_recover, worker_id
from .tasks import EXECUTORS

HEARTBEAT_SECONDS = 30.0
HEARTBEAT_THREAD = "lostprune-heartbeat"
POLL_SECONDS = 0.5


class ExperimentError(RuntimeError):
    """Some tasks failed; the store keeps their errors (``details``: the first one's traceback)."""

    def __init__(self, message: str, details: str | None = None):
        super().__init__(message)
        self.details = details


def results_dir(config: ExperimentConfig, out: str | Path | None) -> Path:
    return Path(out) if out is not None else Path("runs") / config.name


def prepare(config: ExperimentConfig, root: Path, retry_failed: bool = False) -> Store:
    """Open (or create) the store, check it belongs to this config, add missing tasks. A
    damaged store is kept aside and its backup restored (``store.open_or_recover``)."""
    store = open_or_recover(root / "results.sqlite", resume_hint="rerun `lostprune run` with the same config")
    digest = store.get_meta("config_digest")
    if digest is not None and digest != config.digest():
        store.close()
        raise ExperimentError(
            f"{root} holds results of a different configuration (digest {digest}, this config "
            f"{config.digest()}); pass another --out directory"
        )
    if digest is None:
        store.set_meta("config_digest", config.digest())
        store.set_meta("config", config.to_yaml())
        store.set_meta("created", time.strftime("%Y-%m-%d %H:%M:%S"))
    store.add_tasks(build_plan(config))
    store.release_orphans()
    if retry_failed:
        store.retry_failed()
    store.backup()
    return store


class _Heartbeat:
    """Keeps the claimed task's heartbeat fresh while it runs (so others know it is alive)."""

    def __init__(self, store_path: Path):
        self.store_path = store_path
        self.key: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=HEARTBEAT_THREAD)
        self._thread.start()

    def _run(self) -> None:
        store = Store(self.store_path)
        while not self._stop.wait(HEARTBEAT_SECONDS):
            if self.key is not None:
                store.heartbeat(self.key)
        store.close()

    def stop(self) -> None:
        """Stop and wait: a heartbeat thread still opening its connection after the run returned
        would write the store's schema into whatever file then lies at the path."""
        self._stop.set()
        self._thread.join()


def _next_task(store: Store, owner: str):
    """The next task to run, or None when there is nothing left. Under torchrun the main
    process claims and every process gets the same task (they train it together)."""
    task = None
    if distributed.is_main():
        while True:
            task = store.claim(owner)
            if task is not None or store.counts()["running"] == 0:
                break
            time.sleep(POLL_SECONDS)  # other workers run tasks this one may depend on
    return distributed.broadcast(task)


def worker_loop(
    config: ExperimentConfig, root: Path, on_task=None, splits=None, backups: bool = False
) -> int:
    """Claim and run tasks until none is left. Returns the number of tasks this worker ran.
    ``splits``: the experiment's data when already loaded; ``backups``: this worker keeps the
    store's backup fresh (the one in the main process)."""
    store = Store(root / "results.sqlite")
    env = Environment(
        config, store, device=str(distributed.device()) if distributed.active() else None, splits=splits
    )
    main = distributed.is_main()
    heartbeat = _Heartbeat(store.path) if main else None
    owner = worker_id()
    ran = 0

    def publish(key, networks, results):
        if main:
            store.complete(key, networks, results)

    try:
        while (task := _next_task(store, owner)) is not None:
            if heartbeat is not None:
                heartbeat.key = task.key
            started = time.perf_counter()
            if on_task is not None and main:
                on_task(task)
            try:
                networks, results = EXECUTORS[task.kind](env, task, publish)
            except Exception:  # noqa: BLE001 - a failed task is stored with its traceback; the rest go on
                if main:
                    store.fail(task.key, traceback.format_exc())
            else:
                if main:
                    store.complete(task.key, networks, results, seconds=time.perf_counter() - started)
            finally:
                if main and backups:
                    store.backup_if_due()
                if heartbeat is not None:
                    heartbeat.key = None
            distributed.barrier()
            ran += 1
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        store.close()
    return ran


def exit_with_parent(parent_pid: int, poll: float = POLL_SECONDS) -> threading.Thread:
    """Stop this process when ``parent_pid`` is no longer its parent. A worker whose runner was
    killed (SIGTERM has no handler there, SIGKILL none anywhere) would otherwise run on unseen
    and keep writing to the store; its claimed task is released at the next start instead."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll)
        os._exit(1)

    thread = threading.Thread(target=watch, daemon=True, name="exit-with-parent")
    thread.start()
    return thread


def _worker_process(config_path: str, root: str, threads: int, parent_pid: int) -> None:
    exit_with_parent(parent_pid)
    set_threads(threads)
    worker_loop(load_config(config_path), Path(root))


def check_inputs(config: ExperimentConfig):
    """Load the data and the test subsets the config asks for, so bad input (a missing data
    folder, a subset larger than its split, S overlapping the test set) raises ConfigError
    before any training starts. Returns the data splits."""
    from .environment import load_splits

    splits = load_splits(config)
    Environment(config, splits=splits).check()
    return splits


def run(
    config: str | Path | ExperimentConfig,
    out: str | Path | None = None,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    threads: int | None = None,
    data_root: str | Path | None = None,
) -> Path:
    """Run (or resume) an experiment; returns its results directory. ``threads``: torch
    threads of this process (all workers together), overriding the config's ``threads``;
    ``data_root``: where the data set is, overriding the config's ``data.root``."""
    config_path = None
    if not isinstance(config, ExperimentConfig):
        config_path = str(config)
        config = load_config(config)
    if data_root is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(data_root)))
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    threads = threads if threads is not None else config.threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    root = results_dir(config, out)
    splits = check_inputs(config) if ray_address is None else None  # Ray workers may see other paths
    if distributed.init():  # under torchrun: one worker group training data-parallel
        if ray_address is not None or workers != 1:
            raise ValueError("under torchrun, run with one worker (no --workers or --ray)")
        if distributed.is_main():
            prepare(config, root, retry_failed).close()
        distributed.barrier()
        worker_loop(config, root)
        if not distributed.is_main():
            return root
    store = prepare(config, root, retry_failed)
    bar = Progress(store, config.name, enabled=progress, workers=workers)
    try:
        if distributed.active():
            pass  # the work is done above
        elif ray_address is not None:
            _run_ray(config, config_path, root, workers, ray_address, bar)
        elif workers == 1:
            set_threads(threads)
            worker_loop(config, root, on_task=bar.show, splits=splits, backups=True)
        else:
            if config_path is None or data_root is not None:  # the workers read the config as it is now
                config_path = str(root / "config.yaml")
                tmp = root / "config.yaml.tmp"
                tmp.write_text(config.to_yaml())
                tmp.replace(config_path)
            _run_processes(config_path, root, workers, bar, threads)
    finally:
        bar.close()
    counts = store.counts()
    failed = store.tasks("failed")
    store.backup()
    store.close()
    if failed:
        first = failed[0]
        last = next((line for line in reversed(first["error"].strip().splitlines()) if line.strip()), "")
        raise ExperimentError(
            f"{len(failed)} task(s) failed, e.g. {first['key']}: {last.strip()}. Fix the cause and "
            f"rerun with --retry-failed; finished work is kept in {root} (each task's traceback "
            "is in its results.sqlite, table tasks, column error)",
            details=first["error"],
        )
    if counts["pending"]:
        raise ExperimentError(
            f"{counts['pending']} task(s) could not start (their inputs failed); see {root}"
        )
    return root


def _run_processes(config_path: str, root: Path, workers: int, bar: Progress, threads: int | None) -> None:
    threads = max(1, (threads or physical_cores()) // workers)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_process, args=(config_path, str(root), threads, os.getpid()))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            bar.refresh()
            bar.store.backup_if_due()
            time.sleep(POLL_SECONDS)
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
    bar.refresh()


def _run_ray(
    config: ExperimentConfig, config_path: str | None, root: Path, workers: int, address: str, bar: Progress
) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray: pip install 'lostprune[dist]'") from None
    ray.init(address=address, ignore_reinit_error=True)
    gpus = 1 if torch.cuda.is_available() else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpus)(worker_loop)
    # Workers must see the same results directory (a shared filesystem).
    refs = [remote.remote(config, root.resolve()) for _ in range(workers)]
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, timeout=POLL_SECONDS)
        bar.refresh()
        bar.store.backup_if_due()
    ray.get(refs)
