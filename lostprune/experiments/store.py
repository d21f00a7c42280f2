"""The results store: one SQLite file per experiment (checkpoints beside it).

Work is split into tasks (train a parent, one prune–retrain step, evaluate one network).
A task's outputs — network rows and result rows (one per network × distribution × metric) —
are written in the same transaction that marks it done, so a run killed at any moment
(kill -9 included) loses at most the tasks in flight, and rerunning does each unfinished
task exactly once. Several processes (local workers, Ray workers on a shared filesystem)
share one store: tasks are claimed atomically, result rows are unique by key.

Faults of the file itself (truncated to 0 bytes, half-written, not a database) are found by
``damage`` before the store is opened; ``open_or_recover`` then keeps the damaged file aside
(renamed, never deleted) and restores the newest backup (``Store.backup``, written every
``BACKUP_SECONDS`` while an experiment runs), or says how to go on without one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .._process import pid_alive

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    deps TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    owner TEXT, heartbeat REAL, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL, seconds REAL, error TEXT
);
CREATE TABLE IF NOT EXISTS networks (
    key TEXT PRIMARY KEY,
    role TEXT NOT NULL,            -- parent | pruned | reference
    seed INTEGER NOT NULL,
    method TEXT,                   -- NULL for parents and references
    step INTEGER,                  -- position in the ratio schedule (0-based)
    target_ratio REAL NOT NULL,
    achieved_ratio REAL NOT NULL,
    paper_ratio REAL,
    flop_reduction REAL,
    arm TEXT NOT NULL DEFAULT 'nominal',   -- training arm: nominal | robust
    checkpoint TEXT,
    stats TEXT
);
CREATE TABLE IF NOT EXISTS results (
    network TEXT NOT NULL,
    distribution TEXT NOT NULL,    -- nominal | noise:gaussian:0.1 | corruption:fog:3 | ...
    metric TEXT NOT NULL,          -- error | loss | label_agreement | softmax_l2 | ...
    value REAL NOT NULL,
    extra TEXT,
    PRIMARY KEY (network, distribution, metric)
);
"""

PLACEHOLDER_KIND = "network"  # done by the task that produces the network, never claimed
STALE_AFTER = 600.0  # seconds without a heartbeat before a running task is presumed dead
BACKUP_SECONDS = 60.0  # a running experiment copies its store at most this often
TABLES = {"meta", "tasks", "networks", "results"}


class StoreDamaged(RuntimeError):
    """The results store is unreadable and there is no backup to restore."""


class StoreRecoveredWarning(UserWarning):
    """A damaged results store was kept aside and its backup restored."""


@dataclass
class Task:
    key: str
    kind: str
    payload: dict = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)
    priority: int = 0


@dataclass
class NetworkRow:
    key: str
    role: str
    seed: int
    target_ratio: float
    achieved_ratio: float
    method: str | None = None
    step: int | None = None
    paper_ratio: float | None = None
    flop_reduction: float | None = None
    arm: str = "nominal"
    checkpoint: str | None = None
    stats: dict | None = None


@dataclass
class ResultRow:
    network: str
    distribution: str
    metric: str
    value: float
    extra: dict | None = None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=60000")
        self._conn.executescript(SCHEMA)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def backup_path(self) -> Path:
        return backup_path(self.path)

    def backup(self) -> Path:
        """Copy a consistent snapshot of the store next to it (atomically replacing the last)."""
        dest = self.backup_path
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.unlink(missing_ok=True)
        target = sqlite3.connect(tmp)
        try:
            self._conn.backup(target)
        finally:
            target.close()
        os.replace(tmp, dest)
        self._backed_up = time.monotonic()
        return dest

    def backup_if_due(self, interval: float = BACKUP_SECONDS) -> None:
        if time.monotonic() - getattr(self, "_backed_up", float("-inf")) >= interval:
            self.backup()

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: writers are serialized, readers never see half a task."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row["value"]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ tasks
    def add_tasks(self, tasks: Iterable[Task]) -> int:
        """Insert tasks that are not there yet (a rerun adds nothing twice). Returns how many were new."""
        with self.transaction() as db:
            before = db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            db.executemany(
                "INSERT OR IGNORE INTO tasks (key, kind, payload, deps, priority) VALUES (?, ?, ?, ?, ?)",
                [
                    (t.key, t.kind, json.dumps(t.payload, sort_keys=True), json.dumps(t.deps), t.priority)
                    for t in tasks
                ],
            )
            return db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] - before

    def release_orphans(self, stale_after: float = STALE_AFTER) -> int:
        """Return to 'pending' the running tasks whose owner is gone: a local process that no
        longer exists, or any owner silent for ``stale_after`` seconds."""
        host = socket.gethostname()
        released = 0
        with self.transaction() as db:
            for row in db.execute(
                "SELECT key, owner, heartbeat FROM tasks WHERE status = 'running'"
            ).fetchall():
                owner_host, _, pid = (row["owner"] or "").rpartition(":")
                dead = owner_host == host and pid.isdigit() and not pid_alive(int(pid))
                if dead or (row["heartbeat"] or 0) < time.time() - stale_after:
                    db.execute(
                        "UPDATE tasks SET status = 'pending', owner = NULL WHERE key = ?", (row["key"],)
                    )
                    released += 1
        return released

    def retry_failed(self) -> int:
        with self.transaction() as db:
            return db.execute(
                "UPDATE tasks SET status = 'pending', error = NULL WHERE status = 'failed'"
            ).rowcount

    def claim(self, owner: str | None = None) -> Task | None:
        """Atomically take the highest-priority pending task whose dependencies are done."""
        owner = owner or worker_id()
        with self.transaction() as db:
            done = {r[0] for r in db.execute("SELECT key FROM tasks WHERE status = 'done'")}
            pending = db.execute(
                "SELECT * FROM tasks WHERE status = 'pending' AND kind != ? ORDER BY priority DESC, rowid",
                (PLACEHOLDER_KIND,),
            ).fetchall()
            for row in pending:
                deps = json.loads(row["deps"])
                if all(d in done for d in deps):
                    db.execute(
                        "UPDATE tasks SET status = 'running', owner = ?, heartbeat = ?, started = ?, "
                        "attempts = attempts + 1 WHERE key = ?",
                        (owner, time.time(), time.time(), row["key"]),
                    )
                    return Task(row["key"], row["kind"], json.loads(row["payload"]), deps, row["priority"])
        return None

    def heartbeat(self, key: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE tasks SET heartbeat = ? WHERE key = ?", (time.time(), key))

    def complete(
        self,
        key: str,
        networks: Iterable[NetworkRow] = (),
        results: Iterable[ResultRow] = (),
        seconds: float | None = None,
    ) -> None:
        """Record a task's outputs and mark it done, all in one transaction."""
        with self.transaction() as db:
            for n in networks:
                db.execute(
                    "INSERT OR REPLACE INTO networks (key, role, seed, method, step, target_ratio, achieved_ratio, "
                    "paper_ratio, flop_reduction, arm, checkpoint, stats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        n.key,
                        n.role,
                        n.seed,
                        n.method,
                        n.step,
                        n.target_ratio,
                        n.achieved_ratio,
                        n.paper_ratio,
                        n.flop_reduction,
                        n.arm,
                        n.checkpoint,
                        json.dumps(n.stats) if n.stats is not None else None,
                    ),
                )
            db.executemany(
                "INSERT OR REPLACE INTO results (network, distribution, metric, value, extra) VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        r.network,
                        r.distribution,
                        r.metric,
                        float(r.value),
                        json.dumps(r.extra) if r.extra is not None else None,
                    )
                    for r in results
                ],
            )
            db.execute(
                "UPDATE tasks SET status = 'done', finished = ?, seconds = ?, error = NULL WHERE key = ?",
                (time.time(), seconds, key),
            )

    def fail(self, key: str, error: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE tasks SET status = 'failed', finished = ?, error = ? WHERE key = ?",
                (time.time(), error, key),
            )

    # ------------------------------------------------------------------ queries
    def counts(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status").fetchall()
        counts = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    def tasks(self, status: str | None = None) -> list[sqlite3.Row]:
        if status is None:
            return self._conn.execute("SELECT * FROM tasks ORDER BY rowid").fetchall()
        return self._conn.execute("SELECT * FROM tasks WHERE status = ? ORDER BY rowid", (status,)).fetchall()

    def networks(self) -> list[sqlite3.Row]:
        return self._conn.execute("SELECT * FROM networks ORDER BY seed, role, method, step").fetchall()

    def network(self, key: str) -> sqlite3.Row | None:
        return self._conn.execute("SELECT * FROM networks WHERE key = ?", (key,)).fetchone()

    def results(self) -> list[sqlite3.Row]:
        return self._conn.execute("SELECT * FROM results ORDER BY network, distribution, metric").fetchall()


def backup_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".backup")


def damage(path: str | Path) -> str | None:
    """Why the store file at ``path`` cannot be used, or None (also when it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():
        return "it is not a file"
    if path.stat().st_size == 0:
        return "it is empty (0 bytes): truncated"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=60)  # rw: never creates a file
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"SQLite cannot read it ({exc}): half-written or not a results store"
    if check != "ok":
        return f"SQLite finds it corrupt ({check})"
    if not tables:
        return "it holds no tables: truncated or overwritten"
    if not tables >= TABLES:
        return f"it is not a lostprune results store (tables: {', '.join(sorted(tables))})"
    return None


def _keep_aside(path: Path) -> Path:
    """Rename the damaged store (and its -wal / -shm files) to ``<name>.damaged-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        n += 1
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):  # a WAL of the damaged file must never be applied to another
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    return aside


def open_or_recover(path: str | Path, resume_hint: str = "rerun the same command") -> Store:
    """Open the store at ``path``; if the file is damaged, keep it aside (renamed, never deleted)
    and restore its backup with a ``StoreRecoveredWarning`` saying what was kept, or raise
    ``StoreDamaged`` saying how to go on when no usable backup exists."""
    path = Path(path)
    reason = damage(path)
    if reason is None:
        return Store(path)
    aside = _keep_aside(path)
    backup = backup_path(path)
    if backup.is_file() and damage(backup) is None:
        shutil.copy2(backup, path)
        store = Store(path)
        counts = store.counts()
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(backup.stat().st_mtime))
        warnings.warn(
            f"{path} was damaged ({reason}); kept it as {aside.name} and restored the backup of {when} "
            f"({counts['done']} tasks done): work finished after it is done again",
            StoreRecoveredWarning,
            stacklevel=2,
        )
        return store
    raise StoreDamaged(
        f"{path} is damaged ({reason}); kept it as {aside} (nothing was deleted) and found no usable "
        f"backup ({backup.name}). To start this experiment over in the same directory, {resume_hint} "
        f"(trained networks are trained again); to resume instead, copy an intact copy of the store "
        f"to {path} and {resume_hint}"
    )
