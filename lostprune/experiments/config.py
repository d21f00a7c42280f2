"""Experiment configs: YAML → validated dataclasses. Every error names the bad key (dotted
path) and what is allowed; unknown keys get a did-you-mean suggestion."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .schema import ConfigError, build, choice, value_range


@dataclass
class DataConfig:
    name: str = field(
        default="digits", metadata=choice("digits", "cifar10", "imagefolder", "imagenet", "voc")
    )
    root: str | None = None  # dataset location (not needed for the built-in digits)
    # images in S (data-informed methods), held out of the training split; None: the loader's
    # default (256; the built-in digits: 128)
    s_size: int | None = field(default=None, metadata=value_range(2))
    batch_size: int = field(default=128, metadata=value_range(1))
    train_size: int | None = field(
        default=None, metadata=value_range(1)
    )  # train on N images, an equal share per class
    test_size: int | None = field(
        default=None, metadata=value_range(1)
    )  # test on N images, an equal share per class
    seed: int = field(default=0, metadata=value_range(0))  # draws S, validation and the train/test subsets
    workers: int = field(default=0, metadata=value_range(0))
    augment: bool = True  # training augmentation (random crop + flip)


@dataclass
class ScheduleConfig:
    """Which networks the prune–retrain cycles produce (docs/methods.md §Prune–retrain). Give exactly one of
    ``ratios`` (prune ratios), ``keep`` (keep-ratio segments, e.g.
    ``[{geometric: [0.85, 0.15, 16]}, {linear: [0.15, 0.02, 8]}]``) or ``paper`` (the paper's
    schedule with that many networks)."""

    mode: str = field(default="cascade", metadata=choice("cascade", "oneshot", "rewind"))
    ratios: list[float] | None = None
    keep: list[dict] | None = None
    paper: int | None = field(default=None, metadata=value_range(3))
    rewind_epoch: int = field(default=1, metadata=value_range(0))

    def keep_ratios(self) -> list[float]:
        from ..train.schedules import Geometric, Linear, keep_ratio_schedule, paper_keep_ratios

        given = [k for k in ("ratios", "keep", "paper") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(
                "schedule needs exactly one of ratios, keep or paper"
                + (f" (got {', '.join(given)})" if given else "")
            )
        for key in ("ratios", "keep"):
            if getattr(self, key) == []:
                raise ConfigError(
                    f"schedule.{key} is empty; list at least one "
                    + ("prune ratio in (0, 1)" if key == "ratios" else "segment")
                )
        if self.paper is not None:
            return paper_keep_ratios(self.paper)
        if self.ratios is not None:
            for i, r in enumerate(self.ratios):
                if not 0 < r < 1:
                    raise ConfigError(f"schedule.ratios[{i}] must be a prune ratio in (0, 1), got {r}")
            return [1.0 - r for r in self.ratios]
        segments = []
        kinds = {"geometric": Geometric, "linear": Linear}
        for i, segment in enumerate(self.keep):
            if not isinstance(segment, dict) or len(segment) != 1 or next(iter(segment)) not in kinds:
                raise ConfigError(
                    f"schedule.keep[{i}] must be {{geometric: [start, stop, num]}} or "
                    f"{{linear: [start, stop, num]}}, got {segment!r}"
                )
            kind, args = next(iter(segment.items()))
            if not isinstance(args, list) or len(args) != 3:
                raise ConfigError(f"schedule.keep[{i}].{kind} must be [start, stop, num], got {args!r}")
            try:
                segments.append(kinds[kind](float(args[0]), float(args[1]), int(args[2])))
                segments[-1].points()
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"schedule.keep[{i}].{kind}: {exc}") from None
        return keep_ratio_schedule(*segments)


@dataclass
class NoiseConfig:
    kind: str = field(default="gaussian", metadata=choice("gaussian", "uniform"))
    levels: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.4])
    draws: int = field(default=2, metadata=value_range(1))


@dataclass
class CorruptionConfig:
    names: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=lambda: [3])


@dataclass
class TestConfig:
    nominal: bool = True
    noise: NoiseConfig | None = None
    corruptions: CorruptionConfig | None = None
    allow_training_corruptions: bool = False


@dataclass
class RobustNoiseConfig:
    kind: str = field(default="gaussian", metadata=choice("gaussian", "uniform"))
    levels: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3])  # a sample draws one; 0 = none


def _training_corruptions() -> list[str]:
    from ..train.augment import DEFAULT_TRAINING_CORRUPTIONS

    return list(DEFAULT_TRAINING_CORRUPTIONS)


@dataclass
class RobustConfig:
    """Shift-aware training of the parent and retraining of the pruned networks (docs/methods.md §Guidelines):
    each training sample draws one of ``corruptions`` at one of ``severities`` (0 = clean)
    and, independently, one input-noise level. The corruptions listed here are the training
    ones; ``test.corruptions`` must hold others (held out) unless
    ``test.allow_training_corruptions`` is true. ``prune_sample``: what data-informed methods
    (SiPP, PFP) score on in this arm — ``"shifted"``: S as it is plus one shifted copy drawn
    from the same mix (the distribution the network is trained on), ``"clean"``: S alone."""

    corruptions: list[str] = field(default_factory=_training_corruptions)
    severities: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    noise: RobustNoiseConfig | None = field(default_factory=RobustNoiseConfig)
    prune_sample: str = field(default="shifted", metadata=choice("shifted", "clean"))


@dataclass
class EvalConfig:
    """How the test distributions are evaluated. ``shift_test_size``: the shifted test sets
    (noise, corruptions) use a random subset of that many test images, an equal share per
    class (None: the whole test set); the nominal test set is always whole."""

    shift_test_size: int | None = field(default=None, metadata=value_range(1))


@dataclass
class MetricsConfig:
    """The paper's metrics (docs/methods.md §Prune potential and the sections after it). Where the
    original implementation reads a definition differently, ``*_reading`` options choose (the report
    names the one used):

    - ``boundary``: a pruned network qualifies for the prune potential if its error is
      ``inclusive`` ≤ parent + δ, or ``strict`` < parent + δ (the original: acc + δ > acc_parent);
    - ``noise_potential``: under input noise, P of the ``mean_error`` over the draws, or the
      mean over draws of P (``per_draw``, the original: each draw's errors give one P);
    - ``excess_bootstrap``: resamples for a 95 % bootstrap band on the excess-error slope
      (0: none; the original plots one);
    - ``feature_mode``: informative features by ``exact`` backward selection (one forward per
      candidate pixel) or its ``gradient`` approximation.
    """

    delta: float = field(default=0.005, metadata=value_range(0, 1))
    boundary: str = field(default="inclusive", metadata=choice("inclusive", "strict"))
    noise_potential: str = field(default="mean_error", metadata=choice("mean_error", "per_draw"))
    excess_bootstrap: int = field(default=0, metadata=value_range(0))
    similarity: bool = True  # functional similarity vs parent and a separately trained network
    informative_features: bool = False
    feature_mode: str = field(default="gradient", metadata=choice("gradient", "exact"))
    feature_images: int = field(default=16, metadata=value_range(1))
    feature_fraction: float = field(default=0.1, metadata=value_range(0, 1, low_open=True))
    feature_step: float = field(
        default=0.01, metadata=value_range(0, 1, low_open=True)
    )  # pixels removed per round


@dataclass
class ExperimentConfig:
    name: str
    network: str
    network_options: dict = field(default_factory=dict)  # keyword arguments of lostprune.models.create
    data: DataConfig = field(default_factory=DataConfig)
    methods: list[str] = field(default_factory=lambda: ["wt", "sipp", "ft", "pfp"])
    # {method: {option: value}}: keyword options of lostprune.prune per method, e.g.
    # {pfp: {coupled: per_layer}} or {ft: {round_to: auto}}
    method_options: dict = field(default_factory=dict)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(ratios=[0.5, 0.7, 0.8, 0.9]))
    train: dict = field(default_factory=dict)  # lostprune.train.TrainConfig fields (parent training)
    retrain: dict = field(default_factory=dict)  # overrides of `train` for retraining (LR rewinding)
    robust: RobustConfig | None = None  # shift-aware training and retraining: a second training arm
    seeds: list[int] = field(default_factory=lambda: [0])
    test: TestConfig = field(default_factory=TestConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    num_classes: int | None = field(default=None, metadata=value_range(1))
    device: str = "auto"
    threads: int | None = field(
        default=None, metadata=value_range(1)
    )  # torch threads; None: the physical cores

    # ---- derived
    def train_config(self, seed: int = 0):
        """The parent's lostprune.train.TrainConfig."""
        return _train_config(self.train, "train", seed)

    def retrain_config(self, seed: int = 0):
        """The retraining schedule: ``train`` with ``retrain``'s overrides (a length given in
        ``retrain`` as ``epochs`` or ``steps`` replaces the other one of ``train``)."""
        base = dict(self.train)
        for length, other in (("epochs", "steps"), ("steps", "epochs")):
            if length in self.retrain:
                base.pop(other, None)
        return _train_config({**base, **self.retrain}, "retrain", seed)

    def keep_ratios(self) -> list[float]:
        return self.schedule.keep_ratios()

    def prune_ratios(self) -> list[float]:
        return [1.0 - k for k in self.keep_ratios()]

    def digest(self) -> str:
        """Hash of everything that changes results (not the name, not ``threads``). Fields
        added later leave it unchanged while at their default, so older stores still resume."""
        data = dataclasses.asdict(self)
        for key in ("name", "threads"):
            data.pop(key)
        for path, default in _ADDED_LATER.items():
            *parents, last = path
            target = data
            for part in parents:
                target = target[part]
            if target[last] == default:
                target.pop(last)
        if data["data"]["s_size"] is None:
            data["data"]["s_size"] = 256  # the old default (the digits ignored it): same digest as then
        if data["data"].get("test_size") is not None:
            data["data"]["test_subset"] = "balanced"  # was the first N images: not the same results
        versions = _method_versions(self.methods)
        if versions:  # a method that now computes something else: its old results do not resume
            data["method_versions"] = versions
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def _method_versions(methods: list[str]) -> dict[str, int]:
    """{method: version} of the methods whose version is not 1 (unknown names are left to
    validation)."""
    from ..methods import available_methods, get_method

    known = set(available_methods())
    return {m: get_method(m).version for m in methods if m in known and get_method(m).version != 1}


# Fields added after stores existed, with the value that reproduces the old behaviour.
_ADDED_LATER = {
    ("method_options",): {},
    ("data", "train_size"): None,
    ("data", "seed"): 0,
    ("eval",): dataclasses.asdict(EvalConfig()),
    ("metrics", "boundary"): "inclusive",
    ("metrics", "noise_potential"): "mean_error",
    ("metrics", "excess_bootstrap"): 0,
    ("metrics", "feature_mode"): "gradient",
}


def _train_config(values: dict, key: str, seed: int):
    from ..train.train_config import TrainConfig

    allowed = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed"}
    for name in values:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {key}.{name}{hint} (allowed: {', '.join(sorted(allowed))})")
    if "epochs" in values and "steps" in values:
        raise ConfigError(
            f"{key}: give epochs or steps, not both (got epochs={values['epochs']!r}, "
            f"steps={values['steps']!r})"
        )
    try:
        return TrainConfig(**values, seed=seed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _validate_method_options(config: ExperimentConfig) -> None:
    from ..methods import get_method

    if not isinstance(config.method_options, dict):
        raise ConfigError("method_options must map a method to its options, e.g. {pfp: {coupled: per_layer}}")
    listed = {m.lower() for m in config.methods}
    for method, options in config.method_options.items():
        if str(method).lower() not in listed:
            raise ConfigError(f"method_options.{method}: not in methods ({', '.join(config.methods)})")
        if not isinstance(options, dict):
            raise ConfigError(f"method_options.{method} must map option names to values, got {options!r}")
        known = get_method(str(method)).option_names
        for name in options:
            if known is not None and name not in known:
                allowed = ", ".join(known) if known else "none"
                raise ConfigError(
                    f"unknown option method_options.{method}.{name} (options of {method}: {allowed})"
                )


def prune_options_for(config: ExperimentConfig, method: str) -> dict:
    """The keyword options ``lostprune.prune`` gets for ``method`` in this study."""
    return next((dict(o) for m, o in config.method_options.items() if str(m).lower() == method.lower()), {})


def _validate_semantics(config: ExperimentConfig) -> None:
    from .. import models
    from ..methods import available_methods

    if config.network.lower() not in models.available():
        raise ConfigError(f"network must be one of {', '.join(models.available())}; got {config.network!r}")
    try:
        models.create(config.network, **config.network_options)
    except TypeError as exc:
        raise ConfigError(f"network_options: {exc}") from None
    for i, method in enumerate(config.methods):
        if method.lower() not in available_methods():
            raise ConfigError(f"methods[{i}] must be one of {', '.join(available_methods())}; got {method!r}")
    if not config.methods:
        raise ConfigError("methods must list at least one pruning method")
    _validate_method_options(config)
    if not config.seeds:
        raise ConfigError("seeds must list at least one seed")
    config.train_config()
    config.retrain_config()
    if config.data.name != "digits" and not config.data.root:
        raise ConfigError(
            f"data.root is required for data.name={config.data.name!r} (the dataset's location)"
        )
    keep = config.keep_ratios()  # validates the schedule
    if config.schedule.mode != "oneshot" and any(b >= a for a, b in itertools.pairwise(keep)):
        raise ConfigError(
            f"schedule: prune ratios must increase in {config.schedule.mode} mode "
            f"(each cycle prunes further), got {[round(1 - k, 4) for k in keep]}"
        )
    if config.test.noise is not None:
        for i, level in enumerate(config.test.noise.levels):
            if level < 0:
                raise ConfigError(f"test.noise.levels[{i}] must be >= 0, got {level}")
    if config.test.corruptions is not None:
        from ..robustness.corruptions import NAMES

        for i, name in enumerate(config.test.corruptions.names):
            if name not in NAMES:
                raise ConfigError(
                    f"test.corruptions.names[{i}] must be one of {', '.join(NAMES)}; got {name!r}"
                )
        for i, sev in enumerate(config.test.corruptions.severities):
            if not 1 <= sev <= 5:
                raise ConfigError(f"test.corruptions.severities[{i}] must be in 1..5, got {sev}")
    if config.robust is not None:
        _validate_robust(config)


def _validate_robust(config: ExperimentConfig) -> None:
    from ..robustness.corruptions import NAMES

    robust = config.robust
    for i, name in enumerate(robust.corruptions):
        if name not in NAMES:
            raise ConfigError(f"robust.corruptions[{i}] must be one of {', '.join(NAMES)}; got {name!r}")
    if not robust.severities:
        raise ConfigError("robust.severities must list at least one severity in 0..5 (0 = clean)")
    for i, sev in enumerate(robust.severities):
        if not 0 <= sev <= 5:
            raise ConfigError(f"robust.severities[{i}] must be in 0..5 (0 = clean), got {sev}")
    if robust.noise is not None:
        if not robust.noise.levels:
            raise ConfigError("robust.noise.levels must list at least one level >= 0 (0 = no noise)")
        for i, level in enumerate(robust.noise.levels):
            if level < 0:
                raise ConfigError(f"robust.noise.levels[{i}] must be >= 0, got {level}")
    corrupts = bool(robust.corruptions) and max(robust.severities) > 0
    if not corrupts and (robust.noise is None or max(robust.noise.levels) == 0):
        raise ConfigError(
            "robust augments nothing: list robust.corruptions with a severity > 0 in "
            "robust.severities, or robust.noise levels > 0"
        )
    tested = config.test.corruptions.names if config.test.corruptions is not None else []
    overlap = [(i, name) for i, name in enumerate(tested) if name in robust.corruptions]
    if overlap and not config.test.allow_training_corruptions:
        listed = ", ".join(f"test.corruptions.names[{i}]={name!r}" for i, name in overlap)
        raise ConfigError(
            f"{listed} also in robust.corruptions: held-out test corruptions must differ from the "
            "training ones. Remove them from one list, or set test.allow_training_corruptions: true "
            "to test on training corruptions on purpose"
        )


def parse_config(data: dict, source: str = "config") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    config = build(ExperimentConfig, data)
    _validate_semantics(config)
    return config


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML experiment config (a shipped config's name works too)."""
    path = resolve_config_path(path)
    raw = path.read_bytes()
    if b"\0" in raw:
        raise ConfigError(f"{path}: a binary file, not a YAML config (it holds NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); "
            "save the config as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    try:
        return parse_config(data, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


SHIPPED = Path(__file__).resolve().parent.parent / "configs"


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = SHIPPED / f"{candidate.stem}.yaml"
    if shipped.is_file() and candidate.suffix in ("", ".yaml") and len(candidate.parts) == 1:
        return shipped
    raise ConfigError(f"config {str(path)!r} not found (shipped configs: {', '.join(shipped_configs())})")
