"""Experiments: YAML config → task graph → resumable runner over a SQLite store."""

from .config import ConfigError, ExperimentConfig, load_config, parse_config, shipped_configs
from .runner import ExperimentError, run

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "ExperimentError",
    "load_config",
    "parse_config",
    "run",
    "shipped_configs",
]
