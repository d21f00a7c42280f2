"""Experiment configs, the results store, the runner (incl. kill -9 and resume) and the report."""

import csv
import dataclasses
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
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
@pytest.mark.parametrize(
    "change, message",
    [
        ({"netwrok": "x"}, r"unknown key 'netwrok'; did you mean 'network'\?"),
        ({"network": "resnet21"}, r"network must be one of .*resnet20"),
        ({"methods": ["wt", "magnitude"]}, r"methods\[1\] must be one of .*wt"),
        ({"schedule.mode": "sideways"}, r"schedule.mode must be one of cascade, oneshot, rewind"),
        ({"schedule.ratios": [0.5, 1.2]}, r"schedule.ratios\[1\] must be a prune ratio in \(0, 1\)"),
        ({"schedule.ratios": [0.8, 0.5]}, r"prune ratios must increase in cascade mode"),
        (
            {"schedule.paper": 23},
            r"schedule needs exactly one of ratios, keep or paper \(got ratios, paper\)",
        ),
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
        (
            {"method_options": {"ft": {"roundto": 8}}},
            r"unknown option method_options.ft.roundto \(options of ft: coupled, round_to\)",
        ),
        (
            {"method_options": {"wt": {"seed": 1}}},
            r"unknown option method_options.wt.seed \(options of wt: none\)",
        ),
        ({"method_options": {"ft": 8}}, r"method_options.ft must map option names to values"),
        ({"schedule.ratios": []}, r"schedule.ratios is empty; list at least one prune ratio"),
        ({"schedule.keep": [], "schedule.ratios": None}, r"schedule.keep is empty"),
        ({"threads": 0}, r"threads must be >= 1, got 0"),
        ({"data.test_size": 0}, r"data.test_size must be >= 1, got 0"),
        ({"data.train_size": -5}, r"data.train_size must be >= 1, got -5"),
        ({"data.s_size": 1}, r"data.s_size must be >= 2, got 1"),
        ({"eval.shift_test_size": 0}, r"eval.shift_test_size must be >= 1, got 0"),
        ({"train.steps": 10}, r"train: give epochs or steps, not both"),
        (
            {"train.schedule": "onecycle", "train.warmup_epochs": 0.5},
            r"train: warmup_epochs must be 0 with the onecycle",
        ),
        ({"metrics.boundary": "loose"}, r"metrics.boundary must be one of inclusive, strict"),
        ({"metrics.feature_mode": "fast"}, r"metrics.feature_mode must be one of gradient, exact"),
    ],
)
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
    with pytest.raises(ConfigError, match=r"not found .*shipped configs: .*tiny"):
        load_config("no-such-config")


def test_config_files_that_are_not_utf8_yaml(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: x\n\x00\x01\x02")
    with pytest.raises(ConfigError, match="a binary file, not a YAML config"):
        load_config(binary)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 9"):
        load_config(latin)


def test_digest_unchanged_by_options_added_later():
    # Stores written before these options existed must still resume: the digests of the
    # shipped configs that do not use them are those of the earlier code.
    # FT and PFP compute the paper's variants since version 2: configs using them get new
    # digests (their old results are not resumed as the new ones); with WT / SiPP alone, the
    # digests are those of the earlier code.
    demo = load_config("demo")
    assert demo.digest() == "afefc53dc9b9ca34" != "457beeb576ba12f1"
    assert dataclasses.replace(demo, methods=["wt", "sipp"]).digest() == "90d5f5df9aa32fdf"
    before = yaml.safe_load((SHIPPED / "cifar10_resnet20.yaml").read_text())  # as it was then:
    before["test"]["noise"] = {"kind": "gaussian", "levels": [0.05, 0.1, 0.2, 0.4], "draws": 3}
    before["metrics"] = {
        "delta": 0.005,
        "similarity": True,
        "informative_features": True,
        "feature_images": 64,
    }
    assert parse_config(before).digest() == "08221fad43289c7a" != "72e6a80f1ac4e2e3"
    assert parse_config(dict(before, methods=["wt", "sipp"])).digest() == "59f44081c0a2b334"
    config = parse_config(tiny())
    assert parse_config(tiny(threads=1)).digest() == config.digest()  # threads do not change results
    for change in (
        {"data.train_size": 500},
        {"data.seed": 1},
        {"eval.shift_test_size": 50},
        {"metrics.boundary": "strict"},
        {"metrics.noise_potential": "per_draw"},
        {"metrics.excess_bootstrap": 100},
        {"metrics.feature_mode": "exact"},
    ):
        assert parse_config(tiny(**change)).digest() != config.digest(), change


def test_retrain_length_overrides_the_other_length_of_train():
    config = parse_config(tiny(train={"steps": 7, "lr": 0.05}, retrain={"epochs": 2}))
    assert config.train_config().steps == 7 and config.retrain_config().steps is None
    assert config.retrain_config().epochs == 2
    config = parse_config(tiny(train={"epochs": 3}, retrain={"steps": 5}))
    assert config.retrain_config().steps == 5


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"data.test_size": 1000},
            r"data.test_size=1000 is larger than the split it is drawn from \(360 items\)",
        ),
        ({"data.train_size": 5000}, r"data.train_size=5000 is larger than the split"),
        (
            {"data.test_size": None, "eval.shift_test_size": 500},
            r"eval.shift_test_size=500 is larger than the split",
        ),
        ({"data.s_size": 1500}, r"data.s_size=1500 leaves no training images"),
        ({"metrics.feature_images": 97}, r"metrics.feature_images=97 is larger than the split"),
        (
            {"data.name": "imagefolder", "data.root": "/no/such/folder"},
            r"data.root: /no/such/folder is not a folder",
        ),
        (
            {"data.name": "cifar10", "data.root": "/no/such/folder"},
            r"data.root: /no/such/folder does not exist",
        ),
    ],
)
def test_bad_data_fails_before_any_training(tmp_path, change, message):
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(tiny(**change)))
    with pytest.raises(ConfigError, match=message):
        run(config_path, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing was started


def test_environment_test_sets_are_balanced_subsets(tmp_path):
    from lostprune.experiments.environment import Environment

    config = parse_config(
        tiny(**{"data.test_size": 200, "eval.shift_test_size": 50, "metrics.feature_images": 20})
    )
    env = Environment(config)
    assert torch.bincount(env.feature_pixels[1], minlength=10).tolist() == [2] * 10
    pixels, labels = env.test_pixels
    assert pixels.shape[0] == 200 and torch.bincount(labels, minlength=10).tolist() == [20] * 10
    shifted, shifted_labels = env.shift_pixels
    assert shifted.shape[0] == 50 and torch.bincount(shifted_labels, minlength=10).tolist() == [5] * 10
    # the shift subset is drawn from the test subset: every shifted image is a test image
    assert all((pixels == image).all((1, 2, 3)).any() for image in shifted)


def test_plan_dependencies():
    config = parse_config(tiny())
    tasks = {t.key: t for t in build_plan(config)}
    assert tasks["chain/s0/nominal/wt"].deps == ["parent/s0/nominal"]
    assert tasks["pruned/s0/nominal/ft/01"].kind == "network"
    assert set(tasks["eval/pruned/s0/nominal/ft/01"].deps) == {"pruned/s0/nominal/ft/01", "parent/s0/nominal"}
    assert "features/s0/nominal" in tasks
    assert tasks["reference/s0/nominal"].deps == [] and "copy_of" not in tasks["reference/s0/nominal"].payload


def test_a_second_seeds_parent_is_the_separately_trained_network(tmp_path, monkeypatch):
    """With two seeds no extra network is trained: the reference is seed 1's parent, copied
    under its own key and role (same weights), and compared with seed 0's parent as before."""
    import lostprune.train
    from lostprune.report import ExperimentResults

    config = tiny(seeds=[0, 1], methods=["wt"], **{"metrics.informative_features": False})
    plan = {t.key: t for t in build_plan(parse_config(config))}
    assert plan["reference/s0/nominal"].deps == ["parent/s1/nominal"]
    assert plan["reference/s0/nominal"].payload["copy_of"] == "parent/s1/nominal"
    trained = []
    real_train = lostprune.train.train

    def counting(*args, desc=None, **kwargs):  # what the train task calls (chains retrain elsewhere)
        trained.append(desc)
        return real_train(*args, desc=desc, **kwargs)

    monkeypatch.setattr(lostprune.train, "train", counting)
    config_path = tmp_path / "two_seeds.yaml"
    config_path.write_text(yaml.safe_dump(config))
    root = run(config_path, tmp_path / "run", progress=False)
    assert sorted(trained) == ["parent/s0/nominal", "parent/s1/nominal"]  # no third network trained
    rows = {r["key"]: r for r in Store(root / "results.sqlite").networks()}
    reference, source = rows["reference/s0/nominal"], rows["parent/s1/nominal"]
    assert reference["role"] == "reference" and '"copy_of": "parent/s1/nominal"' in reference["stats"]
    copied, original = read_network_file(reference["checkpoint"]), read_network_file(source["checkpoint"])
    assert copied["meta"]["key"] == "reference/s0/nominal"
    assert all(torch.equal(copied["state_dict"][k], v) for k, v in original["state_dict"].items())
    results = ExperimentResults(root)
    # compared with seed 0's parent: agreement below 1 (another network), its own errors kept
    agreement = results.networks["reference/s0/nominal"].values[("nominal", "agreement")]
    assert 0 < agreement < 1
    assert results.networks["reference/s0/nominal"].error("nominal") == results.networks[
        "parent/s1/nominal"
    ].error("nominal")


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
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    import socket

    assert store.claim(f"{socket.gethostname()}:{dead.stdout.strip()}").key == "a"
    assert store.release_orphans() == 1 and store.claim("me").key == "a"


# ----------------------------------------------------------------------------- runner + report
def test_tiny_experiment_end_to_end(tmp_path, capsys):
    from lostprune.report import ExperimentResults, write_report

    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(
        yaml.safe_dump(
            tiny(methods=["wt", "ft", "unpruned"], method_options={"ft": {"coupled": "sum", "round_to": 4}})
        )
    )
    root = run(config_path, tmp_path / "run", progress=False)
    results = ExperimentResults(root)
    assert results.counts["done"] == results.counts["pending"] + results.counts["done"]  # everything ran
    assert {n.role for n in results.networks.values()} == {"parent", "reference", "pruned"}
    assert results.methods == ["wt", "ft"] and results.controls == ["unpruned"]
    control = [n for n in results.networks.values() if n.method == "unpruned"]
    assert len(control) == 2 and all(n.ratio == 0 for n in control)  # retrained, never pruned
    pruned = [n for n in results.networks.values() if n.role == "pruned" and n.method != "unpruned"]
    assert sorted((n.method, n.step) for n in pruned) == [("ft", 0), ("ft", 1), ("wt", 0), ("wt", 1)]
    checkpoints = {r["key"]: r["checkpoint"] for r in Store(root / "results.sqlite").networks()}
    for net in (
        n for n in pruned if n.method == "ft"
    ):  # method_options reach prune: filters in multiples of 4
        state = read_network_file(checkpoints[net.key])["state_dict"]
        kept = [
            int(m.flatten(1).any(1).sum())
            for k, m in state.items()
            if k.endswith("weight_mask") and m.dim() == 4
        ]
        assert kept and all(k % 4 == 0 for k in kept), (net.key, kept)
    for net in pruned:
        assert {"nominal", "noise:gaussian:0.2", "corruption:contrast:3"} <= {d for d, m in net.values}
        assert 0 <= net.error("nominal") <= 1 and 0 <= net.values[("nominal", "agreement")] <= 1
    # P_δ of the one seed's WT curve, recomputed from the stored errors
    from lostprune.metrics import prune_potential

    (curve,) = results.curves("wt")
    assert results.prune_potential("wt", "nominal").values == (
        prune_potential(
            curve.ratios,
            curve.errors("nominal"),
            curve.parent.error("nominal"),
            results.delta,
            boundary=results.boundary,
        ),
    )
    # row a, column b: network b's confidence on network a's informative pixels, as stored
    names, matrix = results.feature_matrix(0)
    assert names[0] == "parent/s0/nominal" and names[-1] == "reference/s0/nominal" and len(names) >= 3
    assert matrix.shape == (len(names), len(names))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert matrix[i, j] == results.networks[b].values[(f"features_of:{a}", "confidence")], (a, b)
            assert 0.0 <= matrix[i, j] <= 1.0
    report = write_report(root)
    text = report.read_text()
    assert (
        "## Prune potential" in text
        and "| WT |" in text
        and (report.parent / "figures" / "accuracy.png").is_file()
    )
    assert "## Control: unpruned" in text and "| UNPRUNED |" not in text  # no prune potential of nothing
    with (report.parent / "results.csv").open() as handle:  # every stored value, once
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(n.values) for n in results.networks.values())
    assert {r["network"] for r in rows} == set(results.networks)
    assert "<table>" in report.with_suffix(".html").read_text()
    # Same config, same directory: nothing left to do, nothing redone.
    finished = {r["key"]: r["finished"] for r in Store(root / "results.sqlite").tasks("done")}
    capsys.readouterr()
    run(config_path, root, progress=True)
    assert {r["key"]: r["finished"] for r in Store(root / "results.sqlite").tasks("done")} == finished
    last = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()][-1]
    # the progress's last state (a plain line: stderr is not a terminal here): nothing left
    assert re.search(r"tiny: (\d+)/\1 tasks done, running=0, failed=0, left≈0:00$", last), last
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny(seeds=[1])))
    with pytest.raises(RuntimeError, match="holds results of a different configuration"):
        run(other, root, progress=False)


def test_parent_runs_once_per_test_distribution(tmp_path, monkeypatch):
    """Counted, not timed: the images the parent is run on while networks are evaluated."""
    from lostprune.experiments import tasks
    from lostprune.experiments.environment import Environment
    from lostprune.metrics import Shift, evaluate_grid
    from lostprune.report import ExperimentResults

    evaluating, seen = [False], {"parent": 0, "others": 0}
    load = Environment.load

    def counting_load(self, key):
        model = load(self, key)
        role = "parent" if key.startswith("parent/") else "others"

        def count(module, inputs, output):
            if evaluating[0]:
                seen[role] += inputs[0].shape[0]

        model.register_forward_hook(count)
        return model

    def counting_evaluate(env, task, publish):
        evaluating[0] = True
        try:
            return tasks.run_evaluate(env, task, publish)
        finally:
            evaluating[0] = False

    monkeypatch.setattr(Environment, "load", counting_load)
    monkeypatch.setitem(tasks.EXECUTORS, "evaluate", counting_evaluate)
    config = tiny(
        **{
            "methods": ["wt"],
            "metrics.informative_features": False,
            "test.noise.draws": 2,
            "eval.shift_test_size": 40,
            "metrics.boundary": "strict",
            "metrics.noise_potential": "per_draw",
            "metrics.excess_bootstrap": 50,
        }
    )
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    root = run(config_path, tmp_path / "run", progress=False)
    # nominal (96 images) once, noise on the 40-image shift subset once per draw, the
    # corruption on it once for the parent's own error: not once per compared network
    assert seen["parent"] == 96 + 2 * 40 + 40
    assert seen["others"] == 3 * (96 + 2 * 40 + 40)  # two pruned networks and the reference
    # the reused outputs give what running the parent beside the network gives
    results = ExperimentResults(root)
    env = Environment(parse_config(config), Store(root / "results.sqlite"))
    net, parent = env.load("pruned/s0/nominal/wt/01"), env.load("parent/s0/nominal")
    shifts = env.noise_shifts()
    joint = evaluate_grid(
        {"network": net, "parent": parent},
        shifts,
        env.shift_pixels,
        normalize=env.normalize,
        reference="parent",
        batch_size=env.eval_batch_size,
        progress=False,
    )
    stored = results.networks["pruned/s0/nominal/wt/01"].values
    name = shifts[0].name
    assert stored[(name, "agreement")] == joint.agreement["network"][name]
    assert stored[(name, "softmax_l2")] == pytest.approx(joint.softmax_l2["network"][name], abs=1e-12)
    assert stored[(name, "error")] == joint.errors["network"][name]
    assert results.networks["parent/s0/nominal"].values[(name, "error")] == joint.errors["parent"][name]
    clean = evaluate_grid(
        {"parent": parent}, [Shift("nominal")], env.test_pixels, normalize=env.normalize, progress=False
    )
    assert results.networks["parent/s0/nominal"].error("nominal") == clean.errors["parent"]["nominal"]
    # the original's readings, chosen in the config, are used and named in the report
    from lostprune.metrics import prune_potential, prune_potential_over_draws
    from lostprune.report import write_report

    curve = results.curves("wt")[0]
    draws = [n.draws[name] for n in curve.networks]
    assert all(len(d) == 2 for d in draws) and draws[1] == joint.error_draws["network"][name]
    expected = prune_potential_over_draws(
        curve.ratios, draws, curve.parent.draws[name], 0.005, boundary="strict"
    )
    assert results.prune_potential("wt", name).mean == expected.mean
    nominal_errors = curve.errors("nominal")
    assert results.prune_potential("wt", "nominal").mean == prune_potential(
        curve.ratios, nominal_errors, curve.parent.error("nominal"), 0.005, boundary="strict"
    )
    _, fit = results.excess_errors("wt", [name])
    assert fit.resamples == 50 and fit.band[0] <= fit.slope <= fit.band[1]
    text = write_report(root).read_text()
    assert "## How the numbers are computed" in text
    assert "below the parent's + δ (strict, the original implementation's acc + δ > acc_parent)" in text
    assert (
        "P of each draw (parent and pruned network on the same noisy inputs), averaged over the draws" in text
    )
    assert (
        "Nominal errors on 96 test images (an equal share per class); noisy and corrupted test sets on a "
        "class-balanced subset of 40 of them."
    ) in text
    assert "with a 95 % bootstrap band (50 resamples of the networks)" in text


def test_corrupted_test_sets_are_kept_as_truncated_uint8(tmp_path, monkeypatch):
    from lostprune.experiments import environment
    from lostprune.robustness import corruptions

    calls, corrupt = [], corruptions.corrupt

    def recording_corrupt(images, name, severity, seed=None):
        calls.append((images.clone(), name, severity, seed))
        return corrupt(images, name, severity, seed=seed)

    monkeypatch.setattr(corruptions, "corrupt", recording_corrupt)
    env = environment.Environment(parse_config(tiny()), Store(tmp_path / "r.sqlite"))
    shift = env.corruption_shifts()[0]
    pixels, _ = env.corrupted(shift)
    images, name, severity, seed = calls[0]
    # the 8-bit test images go in as they are; the result is corrupt()'s uint8 (truncated, as CIFAR-10-C's
    # np.uint8), not a rounding of float output
    assert images.dtype == torch.uint8 and torch.equal(
        images, env.shift_pixels[0].mul(255).round().to(torch.uint8)
    )
    assert torch.equal(pixels.mul(255).round().to(torch.uint8), corrupt(images, name, severity, seed=seed))
    float_rounded = corrupt(images.float() / 255, name, severity, seed=seed).mul(255).round()
    assert not torch.equal(pixels.mul(255).round(), float_rounded)  # rounding would move values up a level
    calls.clear()
    again, _ = env.corrupted(shift)  # from the disk cache
    assert not calls and torch.equal(again, pixels)


def test_damaged_store_is_kept_aside_and_its_backup_restored(tmp_path):
    from lostprune.experiments.store import StoreDamaged, StoreRecoveredWarning
    from lostprune.report import ExperimentResults

    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(
        yaml.safe_dump(
            tiny(**{"methods": ["wt"], "schedule.ratios": [0.5], "metrics.informative_features": False})
        )
    )
    out = tmp_path / "run"
    root = run(config_path, out, progress=False)
    path = root / "results.sqlite"

    def snapshot():
        store = Store(path)
        try:
            return [tuple(r) for r in store.results()], {r["key"]: r["finished"] for r in store.tasks("done")}
        finally:
            store.close()

    before = snapshot()
    assert (root / "results.sqlite.backup").is_file()
    faults = {
        "it is empty (0 bytes): truncated": lambda data: b"",
        "SQLite cannot read it": lambda data: data[: len(data) // 2],
        "not a database": lambda data: b"\x00" * 100 + data[100:],
    }
    for reason, fault in faults.items():
        path.write_bytes(fault(path.read_bytes()))
        with pytest.raises(StoreDamaged, match=f"is damaged \\(.*{re.escape(reason)}"):
            ExperimentResults(root)  # the report says so too, and changes nothing
        with pytest.warns(
            StoreRecoveredWarning,
            match=f"was damaged \\(.*{re.escape(reason)}.*\\); kept it as "
            r"results.sqlite.damaged-\S+ and restored the backup",
        ):
            run(config_path, out, progress=False)
        assert snapshot() == before  # nothing lost, nothing redone
    kept = sorted(root.glob("results.sqlite.damaged-*"))
    assert len(kept) == 3 and kept[0].stat().st_size == 0  # kept aside, never deleted
    (root / "results.sqlite.backup").unlink()
    path.write_bytes(b"")
    with pytest.raises(
        StoreDamaged,
        match=r"found no usable backup .* To start this experiment over in the same "
        r"directory, rerun `lostprune run` with the same config",
    ):
        run(config_path, out, progress=False)
    assert not path.exists() and len(list(root.glob("results.sqlite.damaged-*"))) == 4


def test_kill_9_then_rerun_loses_and_duplicates_nothing(tmp_path):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny(**{"metrics.informative_features": False})))
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "lostprune.cli",
        "run",
        str(config_path),
        "--out",
        str(out),
        "--no-report",
    ]
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
    assert subprocess.run(command, check=False, capture_output=True, timeout=900).returncode == 0
    with sqlite3.connect(db) as conn:
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall())
        after = dict(conn.execute("SELECT key, finished FROM tasks WHERE status = 'done'").fetchall())
        networks = conn.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM networks").fetchone()
        results = conn.execute(
            "SELECT network, distribution, metric, COUNT(*) FROM results "
            "GROUP BY network, distribution, metric HAVING COUNT(*) > 1"
        ).fetchall()
        evaluated = conn.execute("SELECT COUNT(DISTINCT network) FROM results").fetchone()[0]
    assert statuses == {"done": sum(statuses.values())}
    assert all(after[k] == v for k, v in done_before.items())  # finished work was not redone
    assert networks == (6, 6) and results == [] and evaluated == 6


def test_a_stopped_heartbeat_has_closed_its_store(tmp_path):
    """The heartbeat thread opens its own connection; were it still starting when the run
    returned, it would write the schema into a file emptied after the run and so turn a
    damaged store into an empty, valid-looking one (seen as a flaky recovery test)."""
    from lostprune.experiments.runner import _Heartbeat
    from lostprune.experiments.store import damage

    path = tmp_path / "results.sqlite"
    Store(path).close()
    for _ in range(20):
        beat = _Heartbeat(path)
        beat.stop()
        assert not beat._thread.is_alive()
    path.write_bytes(b"")
    time.sleep(0.05)
    assert damage(path) == "it is empty (0 bytes): truncated"
