"""The training loop, top to bottom: `fit` -> `train_one_epoch` / `evaluate`.

Every process runs `fit` (one per GPU, or per CPU worker with gloo). Rank 0 alone writes
checkpoints, the journal and MLflow. Per iteration the learning rate and alpha_SGD come from the
fractional epoch; a step is `accumulate` micro-batches of `batch_per_worker` images, each with
its own BatchNorm statistics, exactly like the paper's 32-image workers.

Host-device synchronisation happens only every `train.log_every` steps, where one small
all-reduce carries the loss sums, the NaN check, rank 0's "checkpoint now" and any rank's
"stop now" (the requeue signal), so all ranks act at the same step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.config import Config
from pipeline.data.loader import Feed
from pipeline.data.transforms import Normalizer
from pipeline.errors import PipelineError
from pipeline.paths import RunPaths
from pipeline.tracking import Tracker
from pipeline.train import checkpoint
from pipeline.train.console import EpochProgress, say
from pipeline.train.distributed import (
    DistEnv,
    all_reduce_sum,
    average_bn_stats,
    bn_buffers,
    wrap_ddp,
)
from pipeline.train.evaluate import evaluate
from pipeline.train.export import save_final
from pipeline.train.model import build_model, to_device
from pipeline.train.noise_scale import NoiseProbe, add_noise_sample, epoch_noise_scale
from pipeline.train.recipe import build_optimizer, configure_determinism
from pipeline.train.schedules import Schedule
from pipeline.train.step import TrainStep, nonfinite_loss


class Preempted(Exception):
    """A stop was requested (the requeue signal); a checkpoint has been written."""


@dataclass
class StopFlag:
    """Set from a signal handler; read by the loop at the next synchronisation point."""

    requested: bool = False


class Trainer:
    """Everything one process needs to train: built once, then `fit`."""

    def __init__(
        self, config: Config, env: DistEnv, fingerprint: str, stop: StopFlag | None = None
    ) -> None:
        self.config = config
        self.env = env
        self.fingerprint = fingerprint
        self.stop = stop or StopFlag()
        self.run = RunPaths.of(config)
        t = config.train
        configure_determinism(t.deterministic)
        torch.manual_seed(config.seed)

        feed = Feed.of(config, env.rank, env.world_size, pin_memory=env.device.type == "cuda")
        self.train_set, self.val_set = feed.train_set, feed.val_set
        self.sampler, self.train_loader, self.val_loader = feed.sampler, feed.train, feed.val
        self.num_classes = self.train_set.num_classes
        self.model = to_device(
            build_model(config.model, self.num_classes), env.device, t.channels_last
        )
        self.progress = checkpoint.Progress()
        loaded = checkpoint.load_for_resume(self.run.checkpoints, env)
        if loaded is not None and loaded.state["fingerprint"] != fingerprint:
            raise PipelineError(
                f"{loaded.path} was made with another config or data (fingerprint "
                f"{loaded.state['fingerprint']} vs {fingerprint}); `train --fresh` starts over"
            )
        if loaded is not None:
            self.model.load_state_dict(loaded.state["model"])
        self.ddp, self.comm = wrap_ddp(self.model, env, t.allreduce_dtype)
        self.optimizer = build_optimizer(config, self.model)
        self.run_id: str | None = None
        if loaded is not None:
            self._restore(loaded)

        self.normalize = Normalizer(env.device, t.channels_last)
        self.schedule = Schedule(config)
        # The noise scale needs two batch sizes: micro-batch and minibatch must differ.
        self.noise = None
        if t.accumulate * env.world_size > 1:
            self.noise = NoiseProbe(self.model, t.accumulate, hooked=env.world_size > 1)
            self.comm.probe = self.noise
        self.step = TrainStep(
            self.model,
            self.ddp,
            self.optimizer,
            self.normalize,
            env.device,
            t.accumulate,
            bf16=t.precision == "bf16",
            average_micro_bn=not config.model.bn_moving_average,
            label_smoothing=t.label_smoothing,
            noise=self.noise,
        )
        self.tracker: Tracker | None = None
        self.at_epoch_end: Callable[[], None] | None = None  # every rank calls it, in step
        self.steps_run = 0  # by this process (the comm hook's byte count is per process)
        self.last_checkpoint = loaded.path if loaded is not None else None

    # ---------------------------------------------------------------------------------------
    # Checkpoints

    def _restore(self, loaded: checkpoint.Resume) -> None:
        self.progress, self.run_id = checkpoint.restore_training(
            loaded, self.model, self.optimizer, self.env
        )
        if self.env.is_main:
            p = self.progress
            say(
                f"resuming from {loaded.path}: epoch {p.epoch}, step {p.step}, "
                f"iteration {p.iteration}"
            )

    def save_checkpoint(self, epoch_end: bool) -> None:
        """Collective: every rank contributes its RNG state; rank 0 writes. At an epoch's end
        the BN statistics are the workers' mean already (validation averaged them)."""
        saved = checkpoint.save_training(
            self.run.checkpoints,
            self.config.train.keep_checkpoints,
            self.model,
            self.optimizer,
            self.progress,
            self.env,
            bn_moving_average=self.config.model.bn_moving_average,
            bn_averaged=epoch_end,
            run_id=self.run_id,
            fingerprint=self.fingerprint,
            config=self.config.model_dump(mode="json"),
        )
        if saved is not None:
            self.last_checkpoint = saved
        if self.config.train.deterministic and self.env.world_size > 2:
            self._new_reducer()

    def _new_reducer(self) -> None:
        """Go on with a new DDP wrapper, as a process resuming from this checkpoint does.

        A new DDP reducer all-reduces its first step in one bucket and re-buckets after it; with
        more than two ranks the bucket layout changes the order in which each gradient's terms
        are summed, and so its last bits. Doing the same here keeps a deterministic run
        bit-identical to one resumed from any of its checkpoints (two ranks need not:
        a + b = b + a). The wrap broadcasts rank 0's buffers, so each rank keeps its own."""
        mine = [b.clone() for b in bn_buffers(self.model)]
        self.ddp = self.step.wrapped = None  # the old reducer goes before the new one comes
        self.ddp, _ = wrap_ddp(self.model, self.env, self.config.train.allreduce_dtype, self.comm)
        self.step.wrapped = self.ddp
        with torch.no_grad():
            for buffer, saved in zip(bn_buffers(self.model), mine, strict=True):
                buffer.copy_(saved)

    # ---------------------------------------------------------------------------------------
    # Training

    def fit(self, tracker: Tracker | None) -> dict[str, Any]:
        self.tracker = tracker
        t = self.config.train
        p = self.progress
        last_save = time.monotonic()
        if self.noise is None and self.env.is_main:
            say(
                "gradient noise scale: not measured (one process, train.accumulate 1: the "
                "micro-batch is the minibatch, and it takes two batch sizes)"
            )
        while p.epoch < t.epochs:
            start = time.monotonic()
            before_resume_s = p.epoch_train_s  # this epoch's time before a restart, if any
            last_save = self.train_one_epoch(p.epoch, last_save)
            train_s = p.epoch_train_s
            average_bn_stats(self.model)  # the paper: validate with the workers' mean stats
            val = self.evaluate()
            lr, alpha = self.schedule(float(p.epoch))
            loss_sum, correct, images = p.epoch_sums
            metrics = {
                "train_loss": loss_sum / images,
                "train_top1": correct / images,
                **val,
                "lr": lr,
                "alpha_sgd": alpha,
                "epoch_time_s": before_resume_s + (time.monotonic() - start),
                "images_per_s": images / max(train_s, 1e-9),
                "data_wait_fraction": p.epoch_wait_s / max(train_s, 1e-9),
                **epoch_noise_scale(p.noise_sums),
            }
            p.history.append({"epoch": p.epoch, **metrics})
            p.wall_time_s += metrics["epoch_time_s"]
            if self.tracker is not None:
                self.tracker.log("epoch", p.epoch, metrics)  # before the checkpoint: see README
            if self.env.is_main:
                say(
                    f"epoch {p.epoch + 1}/{t.epochs}: train_loss {metrics['train_loss']:.4f} "
                    f"val_top1 {100 * val['val_top1']:.2f} % val_top5 "
                    f"{100 * val['val_top5']:.2f} % ({metrics['epoch_time_s']:.1f} s, "
                    f"{metrics['images_per_s']:.0f} img/s)"
                )
            if self.at_epoch_end is not None:
                self.at_epoch_end()
            p.epoch += 1
            p.step = 0
            p.epoch_sums = [0.0, 0.0, 0.0]
            p.noise_sums = [0.0, 0.0, 0.0]
            p.epoch_train_s = p.epoch_wait_s = 0.0
            self.save_checkpoint(epoch_end=True)
            last_save = time.monotonic()
            # The signal may have reached some ranks during validation: agree before going on.
            stop = all_reduce_sum([float(self.stop.requested)], self.env.device)[0] > 0
            if stop and p.epoch < t.epochs:
                raise Preempted(f"stopped after epoch {p.epoch}")
        return self.summary()

    def train_one_epoch(self, epoch: int, last_save: float) -> float:
        t = self.config.train
        p = self.progress
        steps = self.sampler.steps_per_epoch
        self.sampler.set_epoch(epoch, p.step)
        self.model.train()
        batches = iter(self.train_loader)
        shown = EpochProgress(
            epoch, t.epochs, steps, p.step, self.sampler.global_batch, self.env.is_main
        )
        interval_losses: list[torch.Tensor] = []
        interval = torch.zeros(3, dtype=torch.float64, device=self.env.device)  # loss, correct, n
        tick = time.monotonic()
        waits = [0.0]

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            waited = time.monotonic()
            batch = next(batches)
            waits[0] += time.monotonic() - waited
            return batch

        for step in range(p.step, steps):
            e = epoch + step / steps
            lr, alpha = self.schedule(e)
            log_point = (p.iteration + 1) % t.log_every == 0 or step == steps - 1
            step_loss = self.step(
                next_batch,
                lr,
                alpha,
                self.schedule.sgd_from(e),
                interval,
                average_bn=step == steps - 1,
                measure_noise=log_point and self.noise is not None,
            )
            self.steps_run += 1
            interval_losses.append(step_loss)
            p.iteration += 1
            p.step = step + 1

            if log_point:
                now = time.monotonic()
                want_save = self.env.is_main and now - last_save >= t.checkpoint_every_min * 60
                losses = torch.stack(interval_losses)
                nonfinite = float((~torch.isfinite(losses)).sum())  # the one host sync
                flags = [nonfinite, float(want_save), float(self.stop.requested)]
                norms = [0.0, 0.0]
                if self.noise is not None:
                    norms = [float(self.noise.small_sq), float(self.noise.big_sq)]
                reduced = all_reduce_sum([*interval.tolist(), *flags, *norms], self.env.device)
                loss_sum, correct, images, bad, save_now, stop_now, small_sq, big_sq = reduced
                if bad:
                    first = p.iteration - len(interval_losses)
                    raise nonfinite_loss(losses, first, steps, self.last_checkpoint)
                if self.noise is not None:
                    t = self.config.train
                    add_noise_sample(
                        p.noise_sums,
                        small_sq / (t.accumulate * self.env.world_size),
                        big_sq / self.env.world_size,
                        t.batch_per_worker,
                        self.sampler.global_batch,
                    )
                elapsed = now - tick
                p.epoch_train_s += elapsed
                p.epoch_wait_s += waits[0]
                for i, value in enumerate((loss_sum, correct, images)):
                    p.epoch_sums[i] += value
                if self.tracker is not None:
                    metrics = {"lr": lr, "alpha_sgd": alpha, "train_loss": loss_sum / images}
                    metrics["epoch"] = epoch + p.step / steps
                    self.tracker.log("iteration", p.iteration, metrics)
                shown.update(p.step, loss_sum / images, lr, alpha, images / elapsed)
                interval_losses.clear()
                interval.zero_()
                waits[0] = 0.0
                if (save_now or stop_now) and p.step < steps:
                    self.save_checkpoint(epoch_end=False)
                    last_save = time.monotonic()
                if stop_now:
                    if p.step == steps:  # the epoch is complete: finish it first
                        self.stop.requested = True
                    else:
                        raise Preempted(f"stopped at iteration {p.iteration}")
                tick = time.monotonic()
        shown.close()
        return last_save

    def evaluate(self) -> dict[str, float]:
        # The network itself, not the DDP wrapper: no buffer broadcasts, no gradient hooks.
        return evaluate(
            self.model,
            self.val_loader,
            self.normalize,
            self.step.autocast,
            self.env.device,
            len(self.val_set),
        )

    def summary(self) -> dict[str, Any]:
        p = self.progress
        last = p.history[-1] if p.history else {}
        return {
            "epochs": p.epoch,
            "iterations": p.iteration,
            "final": last,
            "best_val_top1": max((h["val_top1"] for h in p.history), default=math.nan),
            "best_val_top5": max((h["val_top5"] for h in p.history), default=math.nan),
            "wall_time_s": p.wall_time_s,
            "global_batch": self.sampler.global_batch,
            "world_size": self.env.world_size,
            "mlflow_run_id": self.run_id,
            "fingerprint": self.fingerprint,
            "allreduce_bytes_per_step": self.comm.bytes_reduced / max(1, self.steps_run),
        }

    def save_final(self) -> None:
        if self.env.is_main:
            save_final(
                self.run,
                self.model,
                self.config,
                self.num_classes,
                self.fingerprint,
                self.summary(),
            )
