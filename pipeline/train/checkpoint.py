"""Checkpoints: one file per save, written atomically, loadable with weights_only=True.

A checkpoint holds everything needed to continue as if never interrupted: the model, the
optimizer state (the paper's Delta and m buffers), every rank's RNG states, the position in the
epoch (which fixes the sampler), the MLflow run id and the fingerprint of the config and data it
was made with. BatchNorm without moving averages saves the workers' mean statistics in the
model (what validation uses; the next step overwrites every rank's own); with moving averages,
which differ per rank, each rank's buffers are saved too.

On resume rank 0 alone chooses and reads the file, and sends it to the others: one read of the
shared filesystem per job instead of one per rank, and every rank resumes from the same file.
"""

from __future__ import annotations

import random
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import atomic
from pipeline.train.distributed import (
    DistEnv,
    average_bn_stats,
    bn_buffers,
    broadcast_from_main,
    gather_to_main,
    scatter_from_main,
)

FORMAT_VERSION = 1
NAME = re.compile(r"^ckpt-e(\d{4})-s(\d{7})\.pt$")


def checkpoint_name(epoch: int, step: int) -> str:
    """`step` is the next step to run in `epoch` (0 = the epoch has not started)."""
    return f"ckpt-e{epoch:04d}-s{step:07d}.pt"


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's RNG states; with a GPU `device`, that device's generator (only its own:
    a node may show the process one GPU or eight, and a resume elsewhere must still fit)."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    key = n["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class _WriteErrorKept:
    """torch.save's file. torch reports a failed write (a full disk, a quota) only as
    "unexpected pos"; this keeps the OSError, which names the cause, to raise instead."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.handle.flush()


def torch_save(obj: Any, path: Path) -> None:
    """torch.save to `path`, failing with the OSError of a failed write."""
    with open(path, "wb", buffering=0) as handle:  # unbuffered: no second failure on close
        sink = _WriteErrorKept(handle)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None


def save(directory: Path, state: dict[str, Any], keep: int) -> Path:
    """Write `state` atomically as ckpt-e<epoch>-s<step>.pt; keep the newest `keep` files."""
    path = directory / checkpoint_name(state["epoch"], state["step"])
    with atomic.atomic_path(path) as tmp:
        torch_save({"format_version": FORMAT_VERSION, **state}, tmp)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files, oldest first (by position in training, not by file time)."""
    if not directory.is_dir():
        return []
    found = [(NAME.match(p.name), p) for p in directory.iterdir()]
    return [p for m, p in sorted((m.groups(), p) for m, p in found if m)]


@dataclass
class Loaded:
    path: Path
    state: dict[str, Any]


def load_latest(directory: Path) -> Loaded | None:
    """The newest checkpoint that loads; a corrupt newer one is skipped with a warning."""
    for path in reversed(list_checkpoints(directory)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or corrupted file raises many types
            message = f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); "
            warnings.warn(message + "falling back to the one before", stacklevel=2)
            print(f"warning: {message}falling back to the one before", file=sys.stderr)
            continue
        if state.get("format_version") != FORMAT_VERSION:
            warnings.warn(f"checkpoint {path} has another format; skipped", stacklevel=2)
            continue
        return Loaded(path, state)
    return None


@dataclass
class Resume:
    """What one rank resumes from: the checkpoint without its per-rank parts, and this rank's
    own part (None when another number of ranks wrote it)."""

    path: Path
    state: dict[str, Any]
    mine: dict[str, Any] | None
    ranks: int  # how many ranks wrote it


def load_for_resume(directory: Path, env: DistEnv) -> Resume | None:
    """Collective: the newest readable checkpoint as rank 0 finds it, on every rank. Rank 0
    reads the file, broadcasts what all ranks share and scatters each rank's own part; the
    other ranks never open it (at 1,024 ranks: one read of ~320 MB instead of 1,024)."""
    loaded = load_latest(directory) if env.is_main else None
    shared = None
    parts: list[dict[str, Any] | None] | None = None
    if loaded is not None:
        per_rank = loaded.state["per_rank"]
        shared = {
            "path": str(loaded.path),
            "ranks": len(per_rank),
            "state": {k: v for k, v in loaded.state.items() if k != "per_rank"},
        }
        parts = list(per_rank) if len(per_rank) == env.world_size else [None] * env.world_size
    elif env.is_main:
        parts = [None] * env.world_size
    shared = broadcast_from_main(shared, env.device)
    mine = scatter_from_main(parts)
    if shared is None:
        return None
    return Resume(Path(shared["path"]), shared["state"], mine, shared["ranks"])


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # the epoch being trained
    step: int = 0  # the next step within it
    iteration: int = 0  # steps done in total
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss, correct, n
    # the epoch's noise-scale estimates so far: tr(Sigma) sum, |G|^2 sum, samples
    noise_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    epoch_train_s: float = 0.0
    epoch_wait_s: float = 0.0
    wall_time_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def rank_state(model: nn.Module, bn_moving_average: bool) -> dict[str, Any]:
    """What one rank adds to a checkpoint: its RNG states, and its BN buffers when they are
    moving averages (docs/scaling.md has their size at 1,024 ranks)."""
    mine: dict[str, Any] = {"rng": rng_state(next(model.parameters()).device)}
    if bn_moving_average:
        mine["bn"] = [b.detach().cpu().clone() for b in bn_buffers(model)]
    return mine


def save_training(
    directory: Path,
    keep: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    env: DistEnv,
    *,
    bn_moving_average: bool,
    bn_averaged: bool,
    run_id: str | None,
    fingerprint: str,
    config: dict[str, Any],
) -> Path | None:
    """Collective: every rank contributes its RNG state (and moving-average BN buffers); rank 0
    writes the checkpoint and returns its path. `bn_averaged`: the BN buffers hold the
    workers' mean already (at an epoch's end, after validation)."""
    if not bn_moving_average and not bn_averaged:
        # Last-minibatch statistics: the next training step overwrites them on every rank, so
        # resuming needs none of them; their mean is what validating this checkpoint uses.
        average_bn_stats(model)
    per_rank = gather_to_main(rank_state(model, bn_moving_average))
    if not env.is_main:
        return None
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "per_rank": per_rank,
        "epoch": progress.epoch,
        "step": progress.step,
        "progress": asdict(progress),
        "world_size": env.world_size,
        "mlflow_run_id": run_id,
        "fingerprint": fingerprint,
        "config": config,
    }
    return save(directory, state, keep)


def restore_training(
    resume: Resume, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv
) -> tuple[Progress, str | None]:
    """Optimizer, this rank's RNG state (and moving-average BN buffers) from `resume` (the
    model's weights are loaded before DDP wraps it); returns where training stands and the
    MLflow run id."""
    state = resume.state
    optimizer.load_state_dict(state["optimizer"])
    if resume.mine is not None:
        if "bn" in resume.mine:
            for buffer, saved in zip(bn_buffers(model), resume.mine["bn"], strict=True):
                buffer.copy_(saved)
        set_rng_state(resume.mine["rng"], env.device)
    elif env.is_main:
        print(
            f"warning: {resume.path} was written by {resume.ranks} processes, this run has "
            f"{env.world_size}: every rank starts from rank 0's BN buffers",
            flush=True,
        )
    return Progress(**state["progress"]), state.get("mlflow_run_id")
