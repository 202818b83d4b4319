"""The one configuration schema of the pipeline, as pydantic models.

Every stage reads its YAML file into `Config` (pipeline/config_files.py);
`workflow/schemas/config.schema.json` is generated from these models and the Snakefile validates
against it. Models forbid unknown keys, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from pipeline.config_sections import (
    NAME_PATTERN,
    DataConfig,
    LauncherConfig,
    ModelConfig,
    OptimizerConfig,
    ScheduleConfig,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
    _Strict,
)
from pipeline.errors import PipelineError


class ConfigError(PipelineError, ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


class Config(_Strict):
    experiment: str = Field(
        pattern=NAME_PATTERN, description="Experiment name: run folder and MLflow experiment."
    )
    label: str | None = Field(
        None, description="Method name in comparisons (a sweep sets it to the method's name)."
    )
    results_dir: str = Field("results", description="Root of every output of the pipeline.")
    seed: int = Field(0, description="Training seed (model init, sampling, augmentation).")
    data: DataConfig
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    launcher: LauncherConfig = LauncherConfig()
    tracking: TrackingConfig = TrackingConfig()
    experiments: list[dict[str, Any]] | None = Field(
        None,
        description="Several experiments on the same shards (e.g. a batch-size sweep): each "
        "entry overrides keys of this config and names its own `experiment`.",
    )
    sweep: SweepConfig | None = Field(
        None, description="A grid of experiments, expanded into one experiment per point."
    )

    @model_validator(mode="after")
    def _recipe_makes_sense(self) -> Config:
        optimizer, schedule = self.optimizer.name, self.schedule.name
        if schedule == "poly" and optimizer in ("hybrid", "rmsprop"):
            raise ValueError(
                f"optimizer.name = {optimizer!r} with schedule.name = 'poly': the RMSprop term is "
                "scaled by lr_rmsprop / lr and poly's warm-up starts at lr 0. Use slow_start or "
                "goyal with this optimizer, or poly with sgd or lars."
            )
        if optimizer == "lars" and schedule == "goyal":
            raise ValueError(
                "optimizer.name = 'lars' with schedule.name = 'goyal': Goyal's warm-up starts at "
                "0.1, an SGD rate, while LARS's rate is of another scale (the trust ratio "
                "multiplies it). Use schedule.name: poly (MLPerf's choice) or slow_start."
            )
        explicit = {"base_lr", "reference_lr"} & self.schedule.model_fields_set
        if optimizer == "lars" and not explicit:
            raise ValueError(
                "optimizer.name = 'lars' needs schedule.base_lr or schedule.reference_lr (with "
                "reference_batch): SGD's default, 0.1 at 256, is not a LARS rate. Published "
                "ResNet-50 runs used 31.2 at 32,768 (MLPerf v0.6, Google) and 10.5 at 3,264 "
                "(MLPerf v2.0, NVIDIA)."
            )
        return self

    @property
    def method(self) -> str:
        """How comparisons group experiments: the label, else optimizer + schedule."""
        return self.label or f"{self.optimizer.name} + {self.schedule.name}"

    @property
    def global_batch(self) -> int:
        t = self.train
        return t.batch_per_worker * t.accumulate * self.launcher.world_size

    @property
    def base_lr(self) -> float:
        """eta_base: as set, else scaled from the reference rate by the scaling rule."""
        s = self.schedule
        if s.base_lr is not None:
            return s.base_lr
        ratio = self.global_batch / s.reference_batch
        return s.reference_lr * (ratio if s.lr_scaling == "linear" else ratio**0.5)

    @property
    def mlflow_experiment(self) -> str:
        """The MLflow experiment of this run: its group's, else its own name."""
        return self.tracking.group or self.experiment

    @property
    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        return f"sqlite:///{(self.results_path / 'mlflow.db').resolve()}"

    @property
    def results_path(self) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(self.results_dir)))
