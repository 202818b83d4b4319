"""The sections of the configuration (data, model, optimizer, schedule, train, launcher,
tracking, sweep), each a pydantic model that forbids unknown keys; `pipeline.config.Config`
puts them together."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NumShards(_Strict):
    train: int = Field(8, ge=1, le=99999, description="Arrow shard files for the train split.")
    val: int = Field(2, ge=1, le=99999, description="Arrow shard files for the val split.")


class DemoData(_Strict):
    """The embedded demo: scikit-learn's bundled digits written out as an ImageNet-style tree."""

    image_size: int = Field(32, ge=8, le=512, description="Side of the square JPEGs written.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each class held out.")


class DataConfig(_Strict):
    """The images: where they are, how they are sharded and cropped."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Dataset name; outputs go to <results_dir>/data/<name>/ and are shared by "
        "every experiment that names the same dataset.",
    )
    root: str = Field(
        description="Folder holding the images (any layout below). '~' and $VARS are expanded; "
        "a relative path is relative to the directory Snakemake or the stage runs in."
    )
    layout: Literal["auto", "folder", "kaggle", "devkit", "tar"] = Field(
        "auto", description="How `root` is organised; `auto` detects it."
    )
    classes_file: str | None = Field(
        None,
        description="Optional class list, one `<wnid> [name]` per line, line order = label. "
        "Without it, labels are the sorted train class folders.",
    )
    demo: DemoData | None = Field(
        None, description="When set, the `demo-data` stage writes the digits tree to `root`."
    )
    num_shards: NumShards = NumShards()
    shuffle_seed: int = Field(
        0, description="Seed of the shuffle that assigns images to shards (not the training seed)."
    )
    max_side: int = Field(
        500, ge=32, description="Images whose longer side exceeds this are downscaled to it."
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="Quality of re-encoded JPEGs.")
    rows_per_batch: int = Field(
        256, ge=1, le=65536, description="Rows per Arrow record batch (far below Arrow's 2 GB)."
    )
    image_size: int = Field(224, ge=8, description="Side of the training and validation crops.")
    crop_scale_min: float = Field(
        0.08, gt=0, le=1, description="RandomResizedCrop's smallest crop area (Goyal et al.: 0.08)."
    )
    hflip: bool = Field(True, description="Random horizontal flips for training.")
    val_resize: int = Field(
        256, ge=8, description="Validation: resize the shorter side to this, then center-crop."
    )
    loader_workers: int = Field(4, ge=0, description="DataLoader worker processes per rank.")

    @property
    def root_path(self) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(self.root)))

    @property
    def classes_path(self) -> Path | None:
        if self.classes_file is None:
            return None
        return Path(os.path.expandvars(os.path.expanduser(self.classes_file)))


class ModelConfig(_Strict):
    """The network: any torchvision classification model."""

    arch: str = Field("resnet50", description="Any torchvision classification model name.")
    small_input: bool = Field(
        False, description="ResNets: 3x3 stride-1 stem without max-pool, for 32-64 px images."
    )
    bn_moving_average: bool = Field(
        False,
        description="false (the paper): BatchNorm keeps the last minibatch's statistics "
        "(momentum 1.0), averaged over all workers before each validation.",
    )
    zero_init_residual: bool = Field(
        True, description="Zero-init the last BN gamma of each residual block (Goyal et al.)."
    )


class OptimizerConfig(_Strict):
    """The update rule and its constants."""

    name: Literal["hybrid", "sgd", "rmsprop", "lars"] = Field(
        "hybrid",
        description="hybrid: RMSprop warm-up moving to momentum SGD (the paper); sgd: "
        "alpha_sgd = 1 throughout; rmsprop: alpha_sgd = 0 throughout; lars: LARS as in the "
        "MLPerf reference (trust ratio per tensor; BN parameters and biases plain momentum).",
    )
    lr_rmsprop: float = Field(3e-4, gt=0, description="eta_RMSprop.")
    momentum: float = Field(0.9, ge=0, lt=1, description="mu1.")
    rms_decay: float = Field(0.99, ge=0, lt=1, description="mu2.")
    eps: float = Field(1e-8, gt=0, description="hybrid: added to sqrt(m) in the RMSprop term.")
    weight_decay: float = Field(
        1e-4, ge=0, description="Added to the gradient; not applied to BN parameters or biases."
    )
    eeta: float = Field(0.001, gt=0, description="lars: the trust coefficient.")
    lars_eps: float = Field(
        0.0, ge=0, description="lars: added to the trust ratio's denominator (MLPerf: 0)."
    )


class ScheduleConfig(_Strict):
    """The learning rate (and alpha_SGD) as a function of the fractional epoch."""

    name: Literal["slow_start", "goyal", "poly"] = Field(
        "slow_start",
        description="slow_start: the paper's; goyal: Goyal et al.'s warm-up and steps; poly: "
        "linear warm-up from 0, then polynomial decay to end_lr (the MLPerf LARS schedule).",
    )
    base_lr: float | None = Field(
        None,
        gt=0,
        description="eta_base; default: reference_lr scaled from reference_batch to the "
        "global batch by lr_scaling (0.1 x global_batch / 256, the linear scaling rule).",
    )
    reference_lr: float = Field(0.1, gt=0, description="The rate known good at reference_batch.")
    reference_batch: int = Field(256, ge=1, description="The minibatch of reference_lr.")
    lr_scaling: Literal["linear", "sqrt"] = Field(
        "linear", description="How eta_base follows the global batch when base_lr is unset."
    )
    center: float = Field(10.0, description="beta_center of the alpha_sgd transition (epochs).")
    period: float = Field(5.0, gt=0, description="beta_period of the alpha_sgd transition.")
    warmup_epochs: float = Field(5.0, ge=0, description="goyal and poly: warm-up length.")
    power: float = Field(2.0, gt=0, description="poly: the decay's exponent.")
    end_lr: float = Field(1e-4, ge=0, description="poly: the rate at the last iteration.")
    scale_to_epochs: bool = Field(
        True,
        description="Scale milestones, warm-up and the alpha_sgd transition by epochs / 90 "
        "when a run is shorter (or longer) than the paper's 90 epochs.",
    )


class TrainConfig(_Strict):
    """Length, minibatch, precision, checkpoints and logging of training."""

    epochs: int = Field(90, ge=1, description="Training length; the schedules scale to it.")
    batch_per_worker: int = Field(32, ge=1, description="Images per micro-batch per process.")
    accumulate: int = Field(
        1, ge=1, description="Micro-batches per step: global batch = batch x accumulate x world."
    )
    val_batch: int = Field(100, ge=1, description="Validation images per batch per process.")
    allreduce_dtype: Literal["fp16", "bf16", "fp32"] = Field(
        "fp16", description="Gradient all-reduce precision (divided by world size first)."
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast, on the GPU and the CPU alike."
    )
    channels_last: bool = Field(False, description="NHWC memory format (faster on GPU).")
    compile_optimizer: bool = Field(
        False,
        description="Fuse the optimizer update with torch.compile: one pass over the weights "
        "instead of eight (needs a C++ compiler on CPUs, Triton on GPUs; compiles once per "
        "process, tens of seconds the first time on a machine).",
    )
    checkpoint_every_min: float = Field(
        10.0, gt=0, description="Periodic checkpoint interval (also one per epoch)."
    )
    keep_checkpoints: int = Field(3, ge=1, description="How many checkpoints to keep.")
    deterministic: bool = Field(
        False, description="Deterministic algorithms (bit-identical resume on CPU)."
    )
    log_every: int = Field(
        10,
        ge=1,
        description="Per-iteration metrics, NaN checks, progress and a gradient noise-scale "
        "sample every N steps.",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Cross-entropy label smoothing (the paper: 0; MLPerf: 0.1)."
    )


class LauncherConfig(_Strict):
    """Where the training job runs: local processes or a Slurm job (through submitit)."""

    cluster: Literal["local", "slurm", "debug"] = Field(
        "local", description="submitit executor: local processes, Slurm, or in-process debug."
    )
    nodes: int = Field(1, ge=1, description="Nodes of the training job.")
    tasks_per_node: int = Field(
        1,
        ge=1,
        description="Processes per node; with GPUs, one per GPU: defaults to gpus_per_node, and "
        "another value is refused.",
    )
    gpus_per_node: int = Field(
        0, ge=0, description="GPUs per node (0: train on CPUs with gloo); Slurm's --gpus-per-node."
    )
    cpus_per_task: int = Field(
        5,
        ge=1,
        description="CPU cores per process: its threads, and one per data-loading worker "
        "(`train` warns when data.loader_workers + 1 exceeds it).",
    )
    timeout_min: int = Field(60, ge=1, description="Job time limit; requeued when reached.")
    partition: str | None = Field(None, description="Slurm partition of the training job.")
    account: str | None = Field(None, description="Slurm account charged for the training job.")
    mem_gb: float | None = Field(None, gt=0, description="Memory per node (Slurm --mem).")
    signal_delay_s: int = Field(
        120, ge=10, description="The requeue signal comes this long before the time limit."
    )
    max_num_timeout: int = Field(3, ge=0, description="How often a timed-out job is requeued.")
    slurm_additional: dict[str, str | int] = Field(
        default_factory=dict, description="Extra sbatch options, e.g. {qos: high}."
    )
    poll_s: float = Field(5.0, gt=0, description="How often `train` checks the job's state.")
    master_port: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="Rendezvous port of the training job. Default: on Slurm derived from the "
        "job id and restart count (20000-31999, below Linux's ephemeral ports); for local "
        "processes a port found free at submission. An inherited MASTER_PORT is ignored.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_task_per_gpu(cls, data: Any) -> Any:
        """Without tasks_per_node, a GPU job runs one process per GPU: the default of 1 would
        leave all GPUs but one of each node idle."""
        if isinstance(data, dict) and "tasks_per_node" not in data:
            gpus = data.get("gpus_per_node")
            if isinstance(gpus, int) and gpus > 0:
                return {**data, "tasks_per_node": gpus}
        return data

    @model_validator(mode="after")
    def _tasks_match_gpus(self) -> LauncherConfig:
        if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ValueError(
                f"launcher.tasks_per_node = {self.tasks_per_node} with launcher.gpus_per_node = "
                f"{self.gpus_per_node}: training runs one process per GPU. Set tasks_per_node: "
                f"{self.gpus_per_node}, or leave it out (it follows gpus_per_node)."
            )
        return self

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


class TrackingConfig(_Strict):
    """MLflow: where metrics, datasets and the model go."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default sqlite:///<results_dir>/mlflow.db. "
        "Use http://host:port for a server when many jobs log at once.",
    )
    group: str | None = Field(
        None,
        description="Set for each point of a sweep or `experiments` list (to the config's "
        "`experiment`): the MLflow experiment the points share and the parent run they nest "
        "under, so the UI compares them in one table.",
    )
    system_metrics_s: float = Field(
        10.0,
        ge=0,
        description="Seconds between samples of CPU, memory, disk, network and GPU use per "
        "node (MLflow's System metrics); 0 turns them off.",
    )


class SweepConfig(_Strict):
    """A grid of experiments on the same shards: every method at every grid point."""

    methods: dict[str, dict[str, Any] | None] = Field(
        default_factory=dict,
        description="Named recipes, each a mapping of config overrides (e.g. goyal: {optimizer: "
        "{name: sgd}, schedule: {name: goyal}}); without any, the config itself is the method. "
        "A method set to null is left out (so that an overlay file can drop one).",
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted key -> values, swept as a cartesian product (e.g. seed: [0, 1]). "
        "`train.global_batch` sets train.accumulate (a multiple of batch_per_worker x world).",
    )
