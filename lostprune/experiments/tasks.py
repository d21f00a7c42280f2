"""What each kind of task does. An executor gets the environment, the task and a
``publish(key, networks, results)`` callback that records outputs in the store; what it
returns is recorded when the task itself completes."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from .. import models
from .._files import save_atomic
from ..io import read_network_file, save_network
from ..train import distributed
from ..train.augment import ShiftAugmentation
from .config import RobustConfig, prune_options_for
from .environment import Environment
from .plan import parent_key, pruned_key
from .store import NetworkRow, ResultRow, Task

Publish = Callable[[str, list[NetworkRow], list[ResultRow]], None]

REFERENCE_SEED_OFFSET = 100_003  # the separately trained network's seed, far from the parents'


def robust_batch_transform(config: RobustConfig, splits=None) -> ShiftAugmentation:
    """The ``ShiftAugmentation`` of an experiment's ``robust:`` section for the data ``splits``
    (their normalization). Unseeded: ``train`` seeds it per epoch, so runs are reproducible
    and resumable."""
    noise = config.noise
    normalize = {}
    if splits is not None and getattr(splits, "normalized", False):
        normalize = {"mean": splits.mean, "std": splits.std}
    return ShiftAugmentation(
        config.corruptions,
        config.severities,
        noise.kind if noise else None,
        noise.levels if noise else (0.0,),
        **normalize,
    )


def _train_options(env: Environment, arm: str) -> dict:
    """Keyword arguments for lostprune.train.train: shift-aware augmentation in the robust arm."""
    if arm != "robust":
        return {}
    return {"batch_transform": robust_batch_transform(env.config.robust, env.splits)}


def run_train(env: Environment, task: Task, publish: Publish) -> tuple[list[NetworkRow], list[ResultRow]]:
    from ..train import train

    config = env.config
    seed, arm, role = task.payload["seed"], task.payload["arm"], task.payload["role"]
    if "copy_of" in task.payload:  # another seed's parent serves as the separately trained network
        return _copy_network(env, task, task.payload["copy_of"])
    run_seed = seed + (REFERENCE_SEED_OFFSET if role == "reference" else 0)
    torch.manual_seed(run_seed)
    model = models.create(
        config.network, num_classes=config.num_classes or env.splits.num_classes, **config.network_options
    ).to(env.device)
    rewind = config.schedule.mode == "rewind" and role == "parent"
    snapshot = [config.schedule.rewind_epoch] if rewind else []
    result = train(
        model,
        env.splits.train,
        config.train_config(seed=run_seed),
        device=env.device,
        checkpoint=env.checkpoint_path(task.key).with_suffix(".train.pt"),
        snapshot_epochs=snapshot,
        progress=False,
        desc=task.key,
        **_train_options(env, arm),
    )
    path = env.network_path(task.key)
    if distributed.is_main():
        save_network(
            path, model, config.network, options=config.network_options, key=task.key, final=result.final
        )
        if rewind:
            save_atomic(result.snapshots[config.schedule.rewind_epoch], path.with_suffix(".rewind.pt"))
    return [_unpruned_row(task, path, {"final": result.final})], []


def _unpruned_row(task: Task, path, stats: dict) -> NetworkRow:
    """The store's row of a trained (or copied) network: its role, seed and arm, nothing pruned."""
    payload = task.payload
    return NetworkRow(
        task.key,
        payload["role"],
        payload["seed"],
        0.0,
        0.0,
        arm=payload["arm"],
        checkpoint=str(path),
        paper_ratio=0.0,
        flop_reduction=0.0,
        stats=stats,
    )


def _copy_network(env: Environment, task: Task, source: str) -> tuple[list[NetworkRow], list[ResultRow]]:
    """The network ``source`` (done: a dependency) stored again under this task's key and role."""
    original = env.store.network(source)
    if original is None:
        raise RuntimeError(f"{task.key}: the network it copies, {source!r}, is not in the store")
    payload = read_network_file(env.network_path(source))
    path = env.network_path(task.key)
    if distributed.is_main():
        save_atomic(
            {**payload, "meta": {**payload.get("meta", {}), "key": task.key, "copy_of": source}}, path
        )
    return [_unpruned_row(task, path, {**json.loads(original["stats"] or "{}"), "copy_of": source})], []


def run_chain(env: Environment, task: Task, publish: Publish) -> tuple[list[NetworkRow], list[ResultRow]]:
    """One method's prune–retrain cycles; each network is published as soon as it exists."""
    from ..train import prune_retrain

    config = env.config
    seed, arm, method = task.payload["seed"], task.payload["arm"], task.payload["method"]
    parent_path = env.network_path(parent_key(seed, arm))
    parent = env.load(parent_key(seed, arm))
    keep_ratios = config.keep_ratios()
    completed = {}
    for step in range(len(keep_ratios)):
        path = env.network_path(pruned_key(seed, arm, method, step))
        if env.store_has_network(pruned_key(seed, arm, method, step)) and path.is_file():
            completed[step] = read_network_file(path)["state_dict"]
    rewind = {}
    if config.schedule.mode == "rewind":
        rewind = {
            "rewind_state": torch.load(parent_path.with_suffix(".rewind.pt"), map_location="cpu"),
            "rewind_epoch": config.schedule.rewind_epoch,
        }
    train_options = _train_options(env, arm)
    prune_data = None  # S of the data split
    if arm == "robust" and config.robust.prune_sample == "shifted":
        from ..train.augment import ShiftedSample

        prune_data = ShiftedSample(env.splits.s, train_options["batch_transform"], seed=seed)
    cycles = prune_retrain(
        parent,
        method,
        keep_ratios,
        env.splits,
        config.retrain_config(seed=seed * 1000),
        mode=config.schedule.mode,
        completed=completed,
        device=env.device,
        progress=False,
        checkpoint_dir=env.checkpoint_path(task.key),
        train_options=train_options,
        prune_data=prune_data,
        prune_options=prune_options_for(config, method),
        **rewind,
    )
    for network in cycles:
        key = pruned_key(seed, arm, method, network.index)
        path = env.network_path(key)
        if distributed.is_main():
            save_network(
                path,
                network.model,
                config.network,
                options=config.network_options,
                key=key,
                final=network.history[-1] if network.history else {},
            )
        stats = network.stats
        publish(
            key,
            [
                NetworkRow(
                    key,
                    "pruned",
                    seed,
                    network.target_ratio,
                    stats.achieved_ratio,
                    method=method,
                    step=network.index,
                    paper_ratio=stats.paper_prune_ratio,
                    flop_reduction=stats.flop_reduction,
                    arm=arm,
                    checkpoint=str(path),
                    stats=network.summary(),
                )
            ],
            [],
        )
    return [], []


def _error_rows(key: str, distribution: str, draws: list[float]) -> list[ResultRow]:
    """Error (mean over noise draws, each draw's in ``extra``) and its std over the draws."""
    from ..metrics import summarize

    error = summarize(draws)
    extra = {"draws": list(draws)} if len(draws) > 1 else None
    return [
        ResultRow(key, distribution, "error", error.mean, extra),
        ResultRow(key, distribution, "error_std", error.std),
    ]


def _grid_rows(
    key: str, grid, model: str, with_similarity: bool, rename: dict | None = None
) -> list[ResultRow]:
    rows = []
    for shift in grid.shifts:
        distribution = (rename or {}).get(shift.name, shift.name)
        rows += _error_rows(key, distribution, grid.error_draws[model][shift.name])
        if with_similarity:
            for metric in ("agreement", "agreement_std", "softmax_l2", "softmax_l2_std"):
                rows.append(ResultRow(key, distribution, metric, getattr(grid, metric)[model][shift.name]))
    return rows


def run_evaluate(env: Environment, task: Task, publish: Publish) -> tuple[list[NetworkRow], list[ResultRow]]:
    """Error on every test distribution; functional similarity to the parent on the nominal
    and noisy ones, on the very same inputs. The parent runs once per test distribution in
    the whole experiment: its outputs are kept (``Environment.parent_results``) and every
    network compared with it reuses them."""
    from ..metrics import Shift, evaluate_grid

    key = task.payload["network"]
    seed, arm = _seed_arm(key)
    parent_name = parent_key(seed, arm)
    batch = env.eval_batch_size
    rows: list[ResultRow] = []
    net = env.load(key) if key != parent_name else None
    for shifts, pixels in env.similarity_groups():
        if net is None:
            _, errors = env.parent_results(key, shifts, pixels)
            rows += [row for shift in shifts for row in _error_rows(key, shift.name, errors[shift.name])]
        elif env.splits.task == "classification":
            outputs, _ = env.parent_results(parent_name, shifts, pixels)
            grid = evaluate_grid(
                {"network": net},
                shifts,
                pixels,
                normalize=env.normalize,
                reference=parent_name,
                reference_outputs=outputs,
                batch_size=batch,
                progress=False,
            )
            rows += _grid_rows(key, grid, "network", env.config.metrics.similarity)
        else:  # segmentation outputs are too large to keep: run the parent beside the network
            grid = evaluate_grid(
                {"network": net, "parent": env.load(parent_name)},
                shifts,
                pixels,
                normalize=env.normalize,
                reference="parent",
                batch_size=batch,
                progress=False,
            )
            rows += _grid_rows(key, grid, "network", env.config.metrics.similarity)
    net = net if net is not None else env.load(key)
    for shift in env.corruption_shifts():  # each corrupted test set is made once per experiment
        grid = evaluate_grid(
            {"network": net},
            [Shift("clean")],
            env.corrupted(shift),
            normalize=env.normalize,
            batch_size=batch,
            progress=False,
        )
        rows += _grid_rows(key, grid, "network", False, rename={"clean": shift.name})
    return [], rows


def run_features(env: Environment, task: Task, publish: Publish) -> tuple[list[NetworkRow], list[ResultRow]]:
    """Informative features (docs/methods.md §Informative features): each network's most informative
    pixels, and every network's confidence and accuracy on every other's."""
    from ..metrics import informative_feature_matrix

    names = task.payload["networks"]
    nets = {name: env.load(name) for name in names}
    images, labels = env.feature_pixels
    if env.normalize is not None:
        mean = torch.tensor(env.normalize[0]).view(-1, 1, 1)
        std = torch.tensor(env.normalize[1]).view(-1, 1, 1)
        images = (images - mean) / std
    step = max(1, round(env.config.metrics.feature_step * images.shape[-1] * images.shape[-2]))
    matrix = informative_feature_matrix(
        nets,
        images.to(env.device),
        labels.to(env.device),
        fraction=env.config.metrics.feature_fraction,
        pixels_per_step=step,
        mode=env.config.metrics.feature_mode,
        progress=False,
    )
    rows = []
    for a in names:
        for b in names:
            rows.append(ResultRow(b, f"features_of:{a}", "confidence", matrix.confidence[a][b]))
            rows.append(ResultRow(b, f"features_of:{a}", "accuracy", matrix.accuracy[a][b]))
    return [], rows


def _seed_arm(key: str) -> tuple[int, str]:
    parts = key.split("/")
    return int(parts[1][1:]), parts[2]


EXECUTORS = {"train": run_train, "chain": run_chain, "evaluate": run_evaluate, "features": run_features}
