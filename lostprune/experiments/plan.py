"""The task graph of an experiment (SPEC §4, §5): per seed and training arm, train a parent
(and a separately trained reference network), run each method's prune–retrain schedule,
evaluate every network on every test distribution, and compare informative features.

Keys are deterministic, so a rerun of the same config finds the tasks it already did."""

from __future__ import annotations

from .config import ExperimentConfig
from .store import Task


def arms(config: ExperimentConfig) -> list[str]:
    """Training arms: nominal, plus shift-aware (robust) training when configured."""
    return ["nominal", "robust"] if config.train.robust else ["nominal"]


def parent_key(seed: int, arm: str) -> str:
    return f"parent/s{seed}/{arm}"


def reference_key(seed: int, arm: str) -> str:
    return f"reference/s{seed}/{arm}"


def pruned_key(seed: int, arm: str, method: str, step: int) -> str:
    return f"pruned/s{seed}/{arm}/{method}/{step:02d}"


def needs_reference(config: ExperimentConfig) -> bool:
    return config.metrics.similarity or config.metrics.informative_features


def feature_steps(n_steps: int) -> list[int]:
    """Which schedule steps the informative-feature comparison uses: first, middle, last."""
    return sorted({0, n_steps // 2, n_steps - 1})


def build_plan(config: ExperimentConfig) -> list[Task]:
    ratios = config.prune_ratios()
    tasks: list[Task] = []
    for seed in config.seeds:
        for arm in arms(config):
            parent = parent_key(seed, arm)
            tasks.append(Task(parent, "train", {"seed": seed, "arm": arm, "role": "parent"}, [], priority=30))
            shared_deps = [parent]
            if needs_reference(config):
                reference = reference_key(seed, arm)
                tasks.append(Task(reference, "train", {"seed": seed, "arm": arm, "role": "reference"}, [],
                                  priority=25))
                shared_deps.append(reference)
            tasks.append(Task(f"eval/{parent}", "evaluate", {"network": parent}, shared_deps, priority=10))
            if needs_reference(config):
                tasks.append(Task(f"eval/{reference}", "evaluate", {"network": reference}, shared_deps, priority=10))
            feature_nets = [parent]
            for method in config.methods:
                previous = parent
                for step, ratio in enumerate(ratios):
                    key = pruned_key(seed, arm, method, step)
                    source = previous if config.schedule.mode == "cascade" else parent
                    tasks.append(Task(key, "prune", {"seed": seed, "arm": arm, "method": method, "step": step,
                                                     "ratio": ratio, "source": source},
                                      [source], priority=20))
                    tasks.append(Task(f"eval/{key}", "evaluate", {"network": key}, [key, *shared_deps], priority=10))
                    previous = key
                feature_nets += [pruned_key(seed, arm, method, s) for s in feature_steps(len(ratios))]
            if config.metrics.informative_features:
                networks = feature_nets + [reference_key(seed, arm)]
                tasks.append(Task(f"features/s{seed}/{arm}", "features", {"seed": seed, "arm": arm,
                                                                          "networks": networks},
                                  networks, priority=5))
    return tasks
