"""A search space in YAML over dotted config keys, and what it makes of one config.

model.init_args.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
model.init_args.embed_dim: {type: int, low: 32, high: 128, step: 32}
data.num_negatives: {type: categorical, choices: [1, 4, 16]}
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import optuna
import yaml

from mmrec_lightning.errors import ConfigurationError

KINDS = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",)}


def read_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """The space file: dotted config key -> ``{type: float | int | categorical, …}``, checked."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"--space {path}: no such file")
    space = yaml.safe_load(path.read_text())
    if not isinstance(space, dict) or not space:
        raise ConfigurationError(f"{path}: expected a mapping of dotted config keys to their ranges")
    for key, spec in space.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in KINDS:
            raise ConfigurationError(f"{path}: {key}: type must be one of {sorted(KINDS)}, got {kind!r}")
        missing = [name for name in KINDS[kind] if name not in spec]
        if missing:
            raise ConfigurationError(f"{path}: {key}: a {kind} range needs {', '.join(missing)}")
    return space


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One value per key, drawn by the trial's sampler."""
    values = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            values[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1))
        else:
            values[key] = trial.suggest_categorical(key, spec["choices"])
    return values


def config_values(config: dict, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The values ``config`` itself has for the keys of ``space``, those inside their ranges: the trial that
    stands for the config as it is."""
    values = {}
    for key, spec in space.items():
        node: Any = config
        for name in key.split("."):
            node = node.get(name) if isinstance(node, dict) else None
        if spec["type"] == "categorical":
            inside = node in spec["choices"]
        else:
            inside = isinstance(node, int | float) and spec["low"] <= node <= spec["high"]
        if inside:
            values[key] = node
    return values


def with_values(config: dict, values: dict[str, Any]) -> dict:
    """A copy of ``config`` with each dotted key set (missing mappings on the way are created)."""
    config = copy.deepcopy(config)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigurationError(f"{key}: {name} is not a mapping in the config")
        node[leaf] = value
    return config
