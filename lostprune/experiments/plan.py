"""The task graph of an experiment (docs/methods.md §Prune–retrain, docs/methods.md §Prune
potential): per seed and training arm, train a parent (and a separately trained reference network),
run each method's prune–retrain cycles, evaluate every network on every test distribution, and
compare informative features.

A method's cycles run as one ``chain`` task (cascade and rewind are sequential by nature)
that publishes each network as soon as it is retrained: the network's own key is a
placeholder task (kind ``network``) the chain marks done, so evaluations start while the
chain goes on, and a killed chain resumes from its last published network.

Keys are deterministic, so a rerun of the same config finds the tasks it already did."""

from __future__ import annotations

from .config import ExperimentConfig
from .store import PLACEHOLDER_KIND as PLACEHOLDER
from .store import Task


def arms(config: ExperimentConfig) -> list[str]:
    """Training arms: nominal, plus shift-aware (robust) training when configured."""
    return ["nominal", "robust"] if config.robust else ["nominal"]


def parent_key(seed: int, arm: str) -> str:
    return f"parent/s{seed}/{arm}"


def reference_key(seed: int, arm: str) -> str:
    return f"reference/s{seed}/{arm}"


def chain_key(seed: int, arm: str, method: str) -> str:
    return f"chain/s{seed}/{arm}/{method}"


def pruned_key(seed: int, arm: str, method: str, step: int) -> str:
    return f"pruned/s{seed}/{arm}/{method}/{step:02d}"


def needs_reference(config: ExperimentConfig) -> bool:
    return config.metrics.similarity or config.metrics.informative_features


def feature_steps(n_steps: int) -> list[int]:
    """Which schedule steps the informative-feature comparison uses: first, middle, last."""
    return sorted({0, n_steps // 2, n_steps - 1})


def build_plan(config: ExperimentConfig) -> list[Task]:
    n_steps = len(config.keep_ratios())
    tasks: list[Task] = []
    for seed in config.seeds:
        for arm in arms(config):
            parent = parent_key(seed, arm)
            tasks.append(Task(parent, "train", {"seed": seed, "arm": arm, "role": "parent"}, [], priority=30))
            eval_deps = [parent]
            # one separately trained network serves every seed (the paper has one too): it is
            # the baseline of an unrelated network. With a second seed, that seed's parent is one
            # (another initialization, another data order, the same training), so it is reused
            # instead of training a network that costs as much as a parent.
            reference = reference_key(config.seeds[0], arm)
            if needs_reference(config) and seed == config.seeds[0]:
                payload = {"seed": seed, "arm": arm, "role": "reference"}
                source = [parent_key(config.seeds[1], arm)] if len(config.seeds) > 1 else []
                if source:
                    payload["copy_of"] = source[0]
                tasks.append(Task(reference, "train", payload, source, priority=25))
                tasks.append(
                    Task(
                        f"eval/{reference}",
                        "evaluate",
                        {"network": reference},
                        [reference, parent],
                        priority=10,
                    )
                )
            tasks.append(Task(f"eval/{parent}", "evaluate", {"network": parent}, eval_deps, priority=10))
            feature_nets = [parent]
            for method in config.methods:
                chain = chain_key(seed, arm, method)
                tasks.append(
                    Task(chain, "chain", {"seed": seed, "arm": arm, "method": method}, [parent], priority=20)
                )
                for step in range(n_steps):
                    key = pruned_key(seed, arm, method, step)
                    tasks.append(Task(key, PLACEHOLDER, {"chain": chain, "step": step}, [parent]))
                    tasks.append(
                        Task(f"eval/{key}", "evaluate", {"network": key}, [key, parent], priority=10)
                    )
                feature_nets += [pruned_key(seed, arm, method, s) for s in feature_steps(n_steps)]
            if config.metrics.informative_features:
                networks = [*feature_nets, reference]
                tasks.append(
                    Task(
                        f"features/s{seed}/{arm}",
                        "features",
                        {"seed": seed, "arm": arm, "networks": networks},
                        networks,
                        priority=5,
                    )
                )
    return tasks
