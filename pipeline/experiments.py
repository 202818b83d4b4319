"""The experiments one config describes: itself, its `experiments` list, or its `sweep` grid.

Every experiment shares the config's data and results folder, so they all train on the same
shards and their reports can be compared.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

from pipeline.config import Config, ConfigError
from pipeline.config_files import config_from_mapping, deep_merge, set_dotted

EXPERIMENT_FORBIDDEN = ("data", "results_dir", "experiments", "sweep")


def expand_experiments(config: Config) -> list[Config]:
    """The experiments a config describes: itself, or one per `experiments` entry and one per
    `sweep` point (merged over this config). All share the data, so none may change it."""
    overrides = [(f"experiments[{i}]", o) for i, o in enumerate(config.experiments or [])]
    if config.sweep is not None:
        overrides += sweep_points(config)
    if not overrides:
        return [config]
    # Only what the config sets: each experiment is validated as if written out in full, so
    # checks on what a user left unset (LARS without a rate of its own) still apply.
    base = config.model_dump(mode="json", exclude_unset=True)
    base.pop("experiments", None)
    base.pop("sweep", None)
    expanded: dict[str, Config] = {}
    for where, override in overrides:
        if "experiment" not in override:
            raise ConfigError(f"{where} needs its own `experiment` name")
        for key in EXPERIMENT_FORBIDDEN:
            if key in override:
                raise ConfigError(
                    f"{where}.{key}: experiments share the shards and results folder; "
                    f"set {key} once at the top level"
                )
        merged = deep_merge(json.loads(json.dumps(base)), override)
        tracking = merged.setdefault("tracking", {})
        if tracking.get("group") is None:  # one MLflow experiment and parent run for them all
            tracking["group"] = config.experiment
        experiment = config_from_mapping(merged, source=f"{where} ({override['experiment']})")
        if experiment.experiment in expanded:
            raise ConfigError(f"{where}: experiment name {experiment.experiment!r} is used twice")
        expanded[experiment.experiment] = experiment
    return list(expanded.values())


SWEEP_NAMES = {"train.global_batch": "b", "train.accumulate": "acc"}  # short name parts


def sweep_points(config: Config) -> list[tuple[str, dict[str, Any]]]:
    """One override per (method, grid point), named <experiment>-<method>-<key><value>..."""
    sweep = config.sweep
    assert sweep is not None
    methods = {name: recipe for name, recipe in sweep.methods.items() if recipe is not None}
    keys = list(sweep.grid)
    points = []
    for method, recipe in (methods or {"": {}}).items():
        for values in itertools.product(*(sweep.grid[k] for k in keys)):
            override = copy.deepcopy(recipe)
            parts = [config.experiment] + ([method] if method else [])
            for key, value in zip(keys, values, strict=True):
                parts.append(f"{SWEEP_NAMES.get(key, key.rsplit('.', 1)[-1])}{value}")
                if key == "train.global_batch":
                    key, value = "train.accumulate", _accumulate_for(config, override, value)
                set_dotted(override, key, value)
            override["experiment"] = "-".join(parts)
            if method:
                override["label"] = method
            points.append((f"sweep point {override['experiment']}", override))
    return points


def _accumulate_for(config: Config, override: dict[str, Any], global_batch: Any) -> int:
    merged = deep_merge(config.model_dump(mode="json"), override)  # only the dump is changed
    per_step = merged["train"]["batch_per_worker"] * (
        merged["launcher"]["nodes"] * merged["launcher"]["tasks_per_node"]
    )
    if not isinstance(global_batch, int) or global_batch % per_step:
        raise ConfigError(
            f"sweep.grid.train.global_batch = {global_batch!r}: must be a multiple of "
            f"batch_per_worker x world size = {per_step}"
        )
    return global_batch // per_step
