"""config/README.md: every config key with its default and meaning, generated from the models
in pipeline/config.py (like workflow/schemas/config.schema.json), so it cannot drift from them.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline.config import Config

REFERENCE_PATH = Path(__file__).resolve().parent.parent / "config" / "README.md"

INTRO = """# Configuration

Generated from `pipeline/config.py` by `python -m pipeline schema --write`; do not edit.

One YAML file describes an experiment: the data, the model, the recipe (optimizer and
schedule), training, the launcher (local processes or Slurm) and tracking. Unknown keys are
refused with the closest known one named, so a typo never falls back to a default.

* `config.yaml`: the embedded demo (`make run`), scikit-learn's digits as JPEGs.
* `experiments/`: ImageNet at the paper's 32k (`imagenet-akiba-32k.yaml`), with LARS
  (`imagenet-lars-32k.yaml`) and Goyal et al.'s 8k (`imagenet-goyal-8k.yaml`); Imagenette;
  the small-scale studies of docs/reproduction.md (`regime-imagenette*.yaml`, 30 epochs at the
  paper's steps per epoch, and `reproduce-imagenette*.yaml`, 8 epochs; overlays merged in
  order).

Run one with `snakemake --configfile config/experiments/<name>.yaml`; change single keys with a
second file (`--configfile exp.yaml mine.yaml`), with `--config 'train={epochs: 30}'`, or, for
one stage, `python -m pipeline <stage> --config FILE --set train.epochs=30`. Required: `experiment`,
`data.name` and `data.root`; everything else has the default below.
"""


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    name = getattr(annotation, "__name__", None)
    text = name if name and origin is None else str(annotation).replace("typing.", "")
    return f"`{text}`".replace("|", "\\|")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory else field.default
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(value)}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        nested = next(
            (
                a
                for a in (field.annotation, *typing.get_args(field.annotation))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if nested is not None and nested is not model:
            rows.append(f"| **`{dotted}`** | | | {field.description or nested.__doc__ or ''} |")
            rows += _rows(nested, f"{dotted}.")
            continue
        description = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `{dotted}` | {_type(field.annotation)} | {_default(field)} | {description} |"
        )
    return rows


def reference_text() -> str:
    lines = [INTRO, "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += _rows(Config, "")
    return "\n".join(lines) + "\n"
