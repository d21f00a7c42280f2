"""Data-parallel training under torchrun (two CPU processes, gloo): the processes stay in
sync, masks stay enforced, and the experiment runner trains each task together."""

import subprocess
import sys
import textwrap

import pytest
import yaml

from lostprune.experiments.config import SHIPPED

TRAIN_SCRIPT = textwrap.dedent(
    """
    import torch, torch.distributed as dist
    import lostprune, lostprune.models as models
    from lostprune.data import load
    from lostprune.train import TrainConfig, distributed, train

    assert distributed.init() and distributed.world_size() == 2
    torch.manual_seed(0)
    pruned = lostprune.prune(models.create("small_cnn", width=8), "wt", 0.5).model
    splits = load("digits", augment=False)
    subset = torch.utils.data.Subset(splits.train, range(256))
    before = torch.cat([p.detach().flatten() for p in pruned.parameters()])
    seen, epochs = torch.zeros(2, dtype=torch.float64), []  # this process's sum of loss x images, images

    def loss_fn(logits, targets):
        loss = torch.nn.functional.cross_entropy(logits, targets)
        if torch.is_grad_enabled():
            seen.add_(torch.tensor([loss.item() * len(targets), len(targets)], dtype=torch.float64))
        return loss

    def end_of_epoch(record):
        epochs.append(seen.clone())
        seen.zero_()

    result = train(pruned, subset, TrainConfig(epochs=2, lr=0.05, batch_size=64, schedule="constant"),
                   loss_fn=loss_fn, callbacks=[end_of_epoch], progress=False)
    flat = torch.cat([p.detach().flatten() for p in pruned.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]), "processes diverged"
    for module in pruned.modules():
        if hasattr(module, "weight_mask"):
            assert torch.all(module.weight[module.weight_mask == 0] == 0)
    history = result.history
    assert not torch.equal(flat, before), "training changed nothing"
    assert len(history) == 2 and history[-1]["train_loss"] < history[0]["train_loss"], history
    for record, totals in zip(history, epochs, strict=True):  # the epoch's loss over both processes' images
        dist.all_reduce(totals)
        assert totals[1] == 256 and abs(record["train_loss"] - totals[0] / totals[1]) < 1e-9, (record, totals)
    if distributed.is_main():
        print("DDP-OK", history[-1]["train_accuracy"])
    dist.destroy_process_group()
    """
)


def torchrun(args, tmp_path, timeout=900):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )


def test_ddp_training_keeps_processes_in_sync(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(TRAIN_SCRIPT)
    done = torchrun([str(script)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DDP-OK" in done.stdout


def test_runner_under_torchrun(tmp_path):
    config = yaml.safe_load((SHIPPED / "tiny.yaml").read_text())
    config.update(
        methods=["wt"],
        schedule={"mode": "cascade", "ratios": [0.5]},
        metrics={"similarity": False, "informative_features": False},
        network_options={"width": 8},
    )
    config["test"] = {"noise": {"kind": "gaussian", "levels": [0.2], "draws": 1}}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    done = torchrun(
        ["-m", "lostprune.cli", "run", str(path), "--out", str(tmp_path / "run"), "--no-report"], tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    from lostprune.report import ExperimentResults

    results = ExperimentResults(tmp_path / "run")
    assert results.counts["done"] == sum(results.counts.values())
    assert {n.role for n in results.networks.values()} == {"parent", "pruned"}
    pruned = results.networks["pruned/s0/nominal/wt/00"]
    assert pruned.ratio == pytest.approx(0.5, abs=0.005)
    assert len(results.distributions()) == 2  # nominal and the noise
    for network in (pruned, results.parents()[(0, "nominal")]):
        errors = [network.error(d) for d in results.distributions()]
        assert all(isinstance(e, float) and 0.0 <= e <= 1.0 for e in errors), errors
