"""Experiment configs, the results store, the runner (incl. kill -9 and resume) and the report."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lostprune.experiments import ConfigError, load_config, parse_config, run
from lostprune.experiments.config import SHIPPED
from lostprune.experiments.plan import build_plan
from lostprune.experiments.store import NetworkRow, ResultRow, Store, Task
from lostprune.io import read_network_file

TINY = yaml.safe_load((SHIPPED / "tiny.yaml").read_text())


def tiny(**changes) -> dict:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in changes.items():
        target = config
        *path, last = key.split(".")
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    return config


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("change, message", [
    ({"netwrok": "x"}, r"unknown key 'netwrok'; did you mean 'network'\?"),
    ({"network": "resnet21"}, r"network must be one of .*resnet20"),
    ({"methods": ["wt", "magnitude"]}, r"methods\[1\] must be one of .*wt"),
    ({"schedule.mode": "sideways"}, r"schedule.mode must be one of cascade, oneshot, rewind"),
    ({"schedule.ratios": [0.5, 1.2]}, r"schedule.ratios\[1\] must be a prune ratio in \(0, 1\)"),
    ({"schedule.ratios": [0.8, 0.5]}, r"prune ratios must increase in cascade mode"),
    ({"schedule.paper": 23}, r"schedule needs exactly one of ratios, keep or paper \(got ratios, paper\)"),
    ({"schedule.keep": [{"cubic": [1, 2, 3]}], "schedule.ratios": None}, r"schedule.keep\[0\] must be"),
    ({"train.lr": "fast"}, r"train: "),
    ({"train.epocs": 3}, r"unknown key train.epocs; did you mean 'epochs'\?"),
    ({"retrain.epochs": 0}, r"retrain: epochs must be a positive integer"),
    ({"data.name": "mnist"}, r"data.name must be one of digits, cifar10"),
    ({"data.name": "cifar10"}, r"data.root is required for data.name='cifar10'"),
    ({"test.corruptions.names": ["fogg"]}, r"test.corruptions.names\[0\] must be one of .*fog"),
    ({"test.corruptions.severities": [6]}, r"test.corruptions.severities\[0\] must be in 1..5"),
    ({"metrics.delta": 2}, r"metrics.delta must be in \[0, 1\], got 2"),
    ({"seeds": []}, r"seeds must list at least one seed"),
    ({"network_options": {"depth": 3}}, r"network_options: "),
    ({"method_options": {"sipp": {"reduce": "max"}}}, r"method_options.sipp: not in methods \(wt, ft\)"),
    ({"method_options": {"ft": {"roundto": 8}}},
     r"unknown option method_options.ft.roundto \(options of ft: coupled, round_to\)"),
    ({"method_options": {"wt": {"seed": 1}}}, r"unknown option method_options.wt.seed \(options of wt: none\)"),
    ({"method_options": {"ft": 8}}, r"method_options.ft must map option names to values"),
])
def test_config_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(tiny(**change))


def test_missing_required_key():
    config = tiny()
    del config["network"]
    with pytest.raises(ConfigError, match="missing required key 'network'"):
        parse_config(config)


def test_shipped_configs_parse(tmp_path):
    config = load_config("tiny")
    assert config.prune_ratios() == pytest.approx([0.5, 0.8])
    paper = parse_config(tiny(**{"schedule.ratios": None, "schedule.paper": 23}))
    assert len(paper.keep_ratios()) == 23
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found .*shipped configs: .*tiny"):
        load_config("no-such-config")


def test_plan_dependencies():
    config = parse_config(tiny())
    tasks = {t.key: t for t in build_plan(config)}
    assert tasks["chain/s0/nominal/wt"].deps == ["parent/s0/nominal"]
    assert tasks["pruned/s0/nominal/ft/01"].kind == "network"
    assert set(tasks["eval/pruned/s0/nominal/ft/01"].deps) == {"pruned/s0/nominal/ft/01", "parent/s0/nominal"}
    assert "features/s0/nominal" in tasks


# ----------------------------------------------------------------------------- store
def test_store_claims_in_dependency_order_and_completes_atomically(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    store.add_tasks([Task("a", "train"), Task("b", "evaluate", deps=["a"]), Task("n", "network", deps=["a"])])
    assert store.add_tasks([Task("a", "train")]) == 0  # nothing twice
    first = store.claim("w1")
    assert first.key == "a" and store.claim("w2") is None  # b waits for a; placeholders are never claimed
    store.complete("a", [NetworkRow("a", "parent", 0, 0.0, 0.0)], [ResultRow("a", "nominal", "error", 0.1)])
    assert store.claim("w2").key == "b"
    store.complete("b", [], [ResultRow("a", "nominal", "error", 0.2)])  # same key: replaced, not duplicated
    rows = store.results()
    assert len(rows) == 1 and rows[0]["value"] == 0.2
    assert store.counts() == {"pending": 1, "running": 0, "done": 2, "failed": 0}


def test_store_releases_tasks_of_dead_workers(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    store.add_tasks([Task("a", "train")])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    assert store.claim(f"{socket.gethostname()}:{dead.stdout.strip()}").key == "a"
    assert store.release_orphans() == 1 and store.claim("me").key == "a"


# ----------------------------------------------------------------------------- runner + report
def test_tiny_experiment_end_to_end(tmp_path):
    from lostprune.report import ExperimentResults, write_report

    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny(method_options={"ft": {"round_to": 4}})))
    root = run(config_path, tmp_path / "run", progress=False)
    results = ExperimentResults(root)
    assert results.counts["done"] == results.counts["pending"] + results.counts["done"]  # everything ran
    assert {n.role for n in results.networks.values()} == {"parent", "reference", "pruned"}
    pruned = [n for n in results.networks.values() if n.role == "pruned"]
    assert sorted((n.method, n.step) for n in pruned) == [("ft", 0), ("ft", 1), ("wt", 0), ("wt", 1)]
    checkpoints = {r["key"]: r["checkpoint"] for r in Store(root / "results.sqlite").networks()}
    for net in (n for n in pruned if n.method == "ft"):  # method_options reach prune: filters in multiples of 4
        state = read_network_file(checkpoints[net.key])["state_dict"]
        kept = [int(m.flatten(1).any(1).sum()) for k, m in state.items() if k.endswith("weight_mask") and m.dim() == 4]
        assert kept and all(k % 4 == 0 for k in kept), (net.key, kept)
    for net in pruned:
        assert {"nominal", "noise:gaussian:0.2", "corruption:contrast:3"} <= {d for d, m in net.values}
        assert 0 <= net.error("nominal") <= 1 and 0 <= net.values[("nominal", "agreement")] <= 1
    assert results.prune_potential("wt", "nominal") is not None
    assert results.feature_matrix(0) is not None
    report = write_report(root)
    text = report.read_text()
    assert "## Prune potential" in text and "| WT |" in text and (report.parent / "figures" / "accuracy.png").is_file()
    assert "<table>" in report.with_suffix(".html").read_text()
    # Same config, same directory: nothing left to do, nothing redone.
    finished = {r["key"]: r["finished"] for r in Store(root / "results.sqlite").tasks("done")}
    run(config_path, root, progress=False)
    assert {r["key"]: r["finished"] for r in Store(root / "results.sqlite").tasks("done")} == finished
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny(seeds=[1])))
    with pytest.raises(RuntimeError, match="holds results of a different configuration"):
        run(other, root, progress=False)


def test_kill_9_then_rerun_loses_and_duplicates_nothing(tmp_path):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny(**{"metrics.informative_features": False})))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "lostprune.cli", "run", str(config_path), "--out", str(out), "--no-report"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = out / "results.sqlite"
    deadline = time.time() + 600
    done_before = {}
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as conn:
                    rows = conn.execute("SELECT key, finished FROM tasks WHERE status = 'done'").fetchall()
            except sqlite3.OperationalError:
                continue
            if len(rows) >= 4:  # parent, reference and part of a chain are done
                done_before = dict(rows)
                break
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as conn:  # what the killed run committed is all still there
        done_before = dict(conn.execute("SELECT key, finished FROM tasks WHERE status = 'done'").fetchall())
    assert subprocess.run(command, capture_output=True, timeout=900).returncode == 0
    with sqlite3.connect(db) as conn:
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall())
        after = dict(conn.execute("SELECT key, finished FROM tasks WHERE status = 'done'").fetchall())
        networks = conn.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM networks").fetchone()
        results = conn.execute("SELECT network, distribution, metric, COUNT(*) FROM results "
                               "GROUP BY network, distribution, metric HAVING COUNT(*) > 1").fetchall()
        evaluated = conn.execute("SELECT COUNT(DISTINCT network) FROM results").fetchone()[0]
    assert statuses == {"done": sum(statuses.values())}
    assert all(after[k] == v for k, v in done_before.items())  # finished work was not redone
    assert networks == (6, 6) and results == [] and evaluated == 6
