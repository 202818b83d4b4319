# Paths and config lookups for the rules. Every path comes from pipeline/paths.py, the same
# functions the stages use, so declared outputs and written files cannot drift apart.

import re

from pipeline.config_files import config_from_mapping, write_resolved
from pipeline.experiments import expand_experiments
from pipeline.stage_keys import stage_fingerprint
from pipeline.paths import (
    SHARD_STEM,
    SPLITS,
    ComparisonPaths,
    DataPaths,
    ReportPaths,
    RunPaths,
    mlflow_group_path,
    resolved_config_path,
)

CFG = config_from_mapping(config)
DATA = DataPaths.of(CFG)
LOGS = CFG.results_path / "logs"
CONDA_ENV = "../../envs/pipeline.yaml"
# The fully resolved configs (defaults and --config overrides included) the stages read: the
# base one for the data rules and the comparison, at a path that depends only on the dataset
# (so experiments on the same shards do not look like changed data rules), and one per
# experiment for training and reports.
CONFIG_FILE = str(write_resolved(CFG, DATA.config))
EXPERIMENTS = {c.experiment: c for c in expand_experiments(CFG)}
EXPERIMENT_FILES = {
    name: str(write_resolved(c, resolved_config_path(c))) for name, c in EXPERIMENTS.items()
}
# Run and report paths with `{experiment}` left as a wildcard.
RUN = RunPaths(CFG.results_path / "runs" / "{experiment}")
REPORT = ReportPaths(RUN.root / "report")
EVALUATION = REPORT.evaluation("final", CFG.data.val_resize, CFG.data.image_size)
COMPARISON = ComparisonPaths.of(CFG)


# Training submits through submitit and waits: it runs where Snakemake runs, not as a job.
localrules:
    train,


wildcard_constraints:
    split="|".join(SPLITS),
    index=r"\d{5}",
    total=r"\d{5}",
    experiment="|".join(re.escape(name) for name in EXPERIMENTS),


def fingerprint(stage):
    """A hash of the config keys `stage` depends on (pipeline/stage_keys.py), used as a rule's
    `params` so that Snakemake re-runs the rule (and everything after it) when they change.
    """
    return stage_fingerprint(CFG, stage)


def num_shards(split):
    return getattr(CFG.data.num_shards, split)


def shard_path(suffix):
    """Wildcard pattern of one shard's files (`.arrow`, `.json` stats)."""
    return str(DATA.shard_dir("{split}") / f"{SHARD_STEM}{suffix}")


def all_shard_files(suffix):
    n = {split: num_shards(split) for split in SPLITS}
    return [
        str(DATA.shard_dir(split) / f"{SHARD_STEM}{suffix}").format(
            split=split, index=f"{i:05d}", total=f"{n[split]:05d}"
        )
        for split in SPLITS
        for i in range(n[split])
    ]


def demo_input(wildcards):
    """The demo tree is built by a rule; a real dataset is outside the workflow."""
    return [str(DATA.demo_done)] if CFG.data.demo is not None else []


def experiment_config(wildcards):
    return EXPERIMENT_FILES[wildcards.experiment]


def experiment_fingerprint(wildcards):
    return stage_fingerprint(EXPERIMENTS[wildcards.experiment], "train")


def per_experiment(pattern):
    return [str(pattern).format(experiment=name) for name in EXPERIMENTS]


def final_targets():
    """Every experiment's report, and the comparison when there are several."""
    targets = per_experiment(REPORT.markdown)
    if len(EXPERIMENTS) > 1:
        targets += [str(COMPARISON.markdown), str(COMPARISON.plot)]
    return targets


def group_input(wildcards):
    """With several experiments, training waits for their MLflow parent run."""
    return [str(mlflow_group_path(CFG))] if len(EXPERIMENTS) > 1 else []
