"""Validation: top-1, top-5 and loss over the whole val split, every image counted once across
the ranks (the eval sampler gives each rank a disjoint part); and the same for a saved
checkpoint, outside training (the `evaluate` stage)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.train.distributed import all_reduce_sum

if TYPE_CHECKING:
    from pipeline.config import Config


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    normalize: Callable[[torch.Tensor], torch.Tensor],
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
    num_images: int,
) -> dict[str, float]:
    """Metrics over the images the ranks' `loader`s yield, which must add up to `num_images`
    (the val split); the model is left in train mode."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for images, labels in loader:
        x = normalize(images)
        y = labels.to(device, non_blocking=True)
        with autocast():
            logits = model(x).float()
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(y[:, None])
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += y.numel()
    model.train()
    loss, top1, top5, n = all_reduce_sum(sums.tolist(), device)
    if n != num_images:
        raise RuntimeError(f"validation saw {n} images, the val split has {num_images}")
    return {"val_loss": loss / n, "val_top1": top1 / n, "val_top5": top5 / n}


def evaluate_checkpoint(config: Config, state: dict[str, Any]) -> dict[str, float]:
    """Single-crop top-1/top-5 of a loaded checkpoint (final.pt or a periodic one) on the val
    shards, at `data.val_resize` / `data.image_size`, in this one process. Moving-average
    BatchNorm buffers saved per rank are first averaged, as the trainer does before it
    validates; otherwise the checkpoint's model holds that average already."""
    from pipeline.data.loader import ShardDataset, make_loader
    from pipeline.data.samplers import EvalBatchSampler
    from pipeline.data.transforms import Normalizer, ValTransform
    from pipeline.paths import DataPaths
    from pipeline.train.distributed import bn_buffers
    from pipeline.train.model import build_model

    val_set = ShardDataset(
        DataPaths.of(config).shard_dir("val"), ValTransform.from_config(config.data)
    )
    model = build_model(config.model, val_set.num_classes)
    model.load_state_dict(state["model"])
    per_rank = [r["bn"] for r in state.get("per_rank", []) if "bn" in r]
    if len(per_rank) > 1:
        with torch.no_grad():
            for i, buffer in enumerate(bn_buffers(model)):
                buffer.copy_(torch.stack([r[i].float() for r in per_rank]).mean(0))
    use_gpu = config.launcher.gpus_per_node > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    model = model.to(device)
    sampler = EvalBatchSampler(len(val_set), config.train.val_batch, 1, 0)
    loader = make_loader(val_set, sampler, config.data.loader_workers, pin_memory=use_gpu)
    return evaluate(model, loader, Normalizer(device), contextlib.nullcontext, device, len(val_set))
