"""Validation: top-1, top-5 and loss over the whole val split, every image counted once across
the ranks (the eval sampler gives each rank a disjoint part)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.train.distributed import all_reduce_sum


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
