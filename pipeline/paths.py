"""Where every output lives. The stages and `workflow/rules/common.smk` both build paths here,
so a rule's declared outputs and the files a stage writes cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config

SPLITS = ("train", "val")
# Shard file stem; common.smk uses it verbatim as the wildcard pattern of the shard rule.
SHARD_STEM = "{split}-{index}-of-{total}"


def shard_name(split: str, index: int, count: int) -> str:
    return SHARD_STEM.format(split=split, index=f"{index:05d}", total=f"{count:05d}")


@dataclass(frozen=True)
class DataPaths:
    """Outputs of the data stages for one dataset: `<results_dir>/data/<data.name>/`."""

    root: Path

    @classmethod
    def of(cls, config: Config) -> DataPaths:
        return cls(config.results_path / "data" / config.data.name)

    @property
    def config(self) -> Path:
        """The resolved config the workflow hands to the data stages."""
        return self.root / "config.yaml"

    @property
    def demo_done(self) -> Path:
        return self.root / "demo-data.json"

    def manifest(self, split: str) -> Path:
        return self.root / "manifest" / f"{split}.parquet"

    @property
    def index_summary(self) -> Path:
        """What the index stage found: layout, counts per split, ignored non-image files."""
        return self.root / "manifest" / "summary.json"

    @property
    def classes(self) -> Path:
        return self.root / "classes.json"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine.csv"

    def shard_dir(self, split: str) -> Path:
        return self.root / "shards" / split

    def shard(self, split: str, index: int, count: int) -> Path:
        return self.shard_dir(split) / f"{shard_name(split, index, count)}.arrow"

    def shard_stats(self, split: str, index: int, count: int) -> Path:
        """Per-shard sidecar the shard job writes (rows, sha256, quarantined files)."""
        return self.shard_dir(split) / f"{shard_name(split, index, count)}.json"

    def shard_index(self, split: str) -> Path:
        return self.shard_dir(split) / "index.json"

    @property
    def verified(self) -> Path:
        return self.root / "shards" / "verified.json"


def resolved_config_path(config: Config) -> Path:
    """Where the workflow writes the fully resolved config it hands to the stages."""
    return config.results_path / "configs" / f"{config.experiment}.yaml"


@dataclass(frozen=True)
class RunPaths:
    """Outputs of one experiment: `<results_dir>/runs/<experiment>/`."""

    root: Path

    @classmethod
    def of(cls, config: Config) -> RunPaths:
        return cls(config.results_path / "runs" / config.experiment)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def journal(self) -> Path:
        """metrics.jsonl: every metric rank 0 logged, whatever happened to MLflow."""
        return self.root / "metrics.jsonl"

    @property
    def final(self) -> Path:
        return self.root / "final.pt"

    @property
    def train_done(self) -> Path:
        return self.root / "train_done.json"

    @property
    def model_dir(self) -> Path:
        """The exported network: a torchvision state dict and what it needs (train/export.py)."""
        return self.root / "model"

    @property
    def model_weights(self) -> Path:
        return self.model_dir / "model.safetensors"

    @property
    def model_card(self) -> Path:
        return self.model_dir / "model.json"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def job(self) -> Path:
        """The submitted job's id and executor, for re-attaching after a restart."""
        return self.train_dir / "job.json"

    @property
    def submitit(self) -> Path:
        return self.train_dir / "submitit"


@dataclass(frozen=True)
class ReportPaths:
    """The report stage's outputs for one experiment: `runs/<experiment>/report/`."""

    root: Path

    @classmethod
    def of(cls, config: Config) -> ReportPaths:
        return cls(RunPaths.of(config).root / "report")

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def markdown(self) -> Path:
        return self.root / "report.md"

    def evaluation(self, checkpoint: str, resize: int, crop: int) -> Path:
        """The `evaluate` stage's result for a checkpoint (its file stem) at one resolution."""
        return self.root / f"evaluation-{checkpoint}-r{resize}-c{crop}.json"


def mlflow_group_path(config: Config) -> Path:
    """Written once the MLflow parent run of the config's experiments exists."""
    return config.results_path / "mlflow-groups" / f"{config.experiment}.json"


@dataclass(frozen=True)
class ComparisonPaths:
    """Several experiments side by side: `<results_dir>/summary.{md,png}`."""

    root: Path

    @classmethod
    def of(cls, config: Config) -> ComparisonPaths:
        return cls(config.results_path)

    @property
    def markdown(self) -> Path:
        return self.root / "summary.md"

    @property
    def plot(self) -> Path:
        return self.root / "summary.png"
