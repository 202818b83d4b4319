"""Which config keys each stage's output depends on, declared once.

The Snakemake rules hash these values into their `params`, so a changed value re-runs the rule
and everything after it, and nothing else; the shards record their keys in their metadata and
`index.json`; the training fingerprint, which decides whether a checkpoint may be resumed, is
the hash of the train keys (plus, at train time, the shards' own identity). A key may name a
whole section; `BOOKKEEPING` keys are left out of it because they change how a stage runs, not
what it produces.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from pipeline.config import Config

STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "demo_data": ("data.demo", "data.root", "data.shuffle_seed"),
    "index": ("data.root", "data.layout", "data.classes_file"),
    "shard": ("data.max_side", "data.jpeg_quality", "data.shuffle_seed", "data.rows_per_batch"),
    "train": (
        "seed",
        "model",
        "optimizer",
        "schedule",
        "train",
        "launcher.world_size",
        "data.name",
        "data.image_size",
        "data.val_resize",
        "data.crop_scale_min",
        "data.hflip",
    ),
}
# The checkpoint interval and how many are kept, the logging interval, and the compiled
# optimizer update (the same arithmetic in one fused loop: only rounding differs, as with
# another thread count), so a run may resume with any of them changed.
BOOKKEEPING = frozenset(
    {
        "train.checkpoint_every_min",
        "train.keep_checkpoints",
        "train.log_every",
        "train.compile_optimizer",
    }
)


def _value(config: Config, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    if isinstance(node, BaseModel):
        dumped = node.model_dump(mode="json")
        return {k: v for k, v in dumped.items() if f"{dotted}.{k}" not in BOOKKEEPING}
    return node


def stage_values(config: Config, stage: str) -> dict[str, Any]:
    """{dotted key: value} of every key `stage` depends on."""
    return {key: _value(config, key) for key in STAGE_KEYS[stage]}


def stage_fingerprint(config: Config, stage: str) -> str:
    """A short hash of `stage_values`: equal exactly when the stage's output would be."""
    text = json.dumps(stage_values(config, stage), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
