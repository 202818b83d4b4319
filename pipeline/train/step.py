"""One training step: `accumulate` micro-batches forward and backward, the gradient all-reduce
(DDP's communication hook, after the last micro-batch only), and the optimizer update.

Kept apart from the loop so that the benchmark times exactly what training runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.errors import PipelineError
from pipeline.train.distributed import bn_buffers
from pipeline.train.noise_scale import NoiseProbe

Batch = tuple[torch.Tensor, torch.Tensor]


class MicroBatchBNMean:
    """With gradient accumulation, make the BN buffers the mean over the step's micro-batches
    (momentum 1.0 would keep only the last one), so `accumulate` micro-batches on one worker
    leave the same statistics as that many workers with one micro-batch each."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = bn_buffers(model)
        self.sums = [torch.zeros_like(b, dtype=torch.float32) for b in self.buffers]
        self.count = 0

    def add(self) -> None:
        for total, buffer in zip(self.sums, self.buffers, strict=True):
            total.add_(buffer)
        self.count += 1

    def finish(self) -> None:
        for total, buffer in zip(self.sums, self.buffers, strict=True):
            buffer.copy_(total / self.count)


class TrainStep:
    def __init__(
        self,
        model: nn.Module,
        wrapped: nn.Module,
        optimizer: torch.optim.Optimizer,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        accumulate: int = 1,
        bf16: bool = False,
        average_micro_bn: bool = False,
        label_smoothing: float = 0.0,
        noise: NoiseProbe | None = None,
    ) -> None:
        self.model = model  # the network itself
        self.wrapped = wrapped  # DDP around it, or the network itself with one process
        self.optimizer = optimizer
        self.normalize = normalize
        self.device = device
        self.accumulate = accumulate
        self.bf16 = bf16
        self.average_micro_bn = average_micro_bn and accumulate > 1
        self.label_smoothing = label_smoothing
        self.noise = noise

    def _no_sync(self) -> contextlib.AbstractContextManager:
        if isinstance(self.wrapped, DistributedDataParallel):
            return self.wrapped.no_sync()
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(
        self,
        next_batch: Callable[[], Batch],
        lr: float,
        alpha_sgd: float,
        sgd_from_now_on: bool,
        sums: torch.Tensor,
        average_bn: bool = False,
        measure_noise: bool = False,
    ) -> torch.Tensor:
        """Run one step; add (loss x n, correct, n) into `sums`; return the mean loss (a device
        tensor: reading it would synchronise with the device, so the caller does it rarely).
        With `measure_noise`, the noise probe records this step's gradient norms."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if "alpha_sgd" in group:  # the hybrid optimizer
                group["alpha_sgd"] = alpha_sgd
                # m matters only through alpha_RMSprop, which is 0 from here on: skip its update.
                group["track_square_avg"] = not sgd_from_now_on
        bn_mean = MicroBatchBNMean(self.model) if average_bn and self.average_micro_bn else None
        noise = self.noise if measure_noise else None
        if noise is not None:
            noise.begin()
        step_loss = torch.zeros((), device=self.device)
        for micro in range(self.accumulate):
            images, labels = next_batch()
            x = self.normalize(images)
            y = labels.to(self.device, non_blocking=True)
            last = micro == self.accumulate - 1  # all-reduce only after the last micro-batch
            with contextlib.nullcontext() if last else self._no_sync(), self.autocast():
                logits = self.wrapped(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
            # Mean over the whole minibatch: DDP averages over workers, this over micro-batches.
            (loss / self.accumulate).backward()
            if noise is not None:
                noise.after_micro(micro)
            if bn_mean is not None:
                bn_mean.add()
            step_loss += loss.detach()
            sums[0] += loss.detach() * y.numel()
            sums[1] += (logits.detach().argmax(1) == y).sum()
            sums[2] += y.numel()
        if bn_mean is not None:
            bn_mean.finish()
        if noise is not None:
            noise.finish()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss / self.accumulate


class NonFiniteLoss(PipelineError, RuntimeError):
    """The loss became NaN or infinite; the message names the iteration."""


def nonfinite_loss(
    losses: torch.Tensor, first_iteration: int, steps_per_epoch: int, last_checkpoint: Any
) -> NonFiniteLoss:
    """Collective: the error naming the first iteration, on any rank, whose loss was NaN/Inf
    (`losses` are this rank's since `first_iteration`) and the last good checkpoint."""
    local = torch.nonzero(~torch.isfinite(losses))
    mine = first_iteration + int(local[0]) if local.numel() else 2**62
    first = torch.tensor([mine], dtype=torch.int64, device=losses.device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
    iteration, steps = int(first), steps_per_epoch
    where = f"epoch {iteration // steps}, step {iteration % steps}" if steps else ""
    return NonFiniteLoss(
        f"the training loss became NaN/Inf at iteration {iteration} ({where}); training "
        f"stopped. Last good checkpoint: {last_checkpoint or 'none yet'}. Lower "
        "schedule.base_lr or check the data."
    )
