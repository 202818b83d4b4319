"""The trained network in a form anyone can use: a plain torchvision state dict in
`model.safetensors`, and `model.json` saying which torchvision model it fits, its classes and
the preprocessing it expects. Loading it needs torchvision and safetensors, no code of ours:

    import json, torchvision, safetensors.torch
    meta = json.load(open("model.json"))
    net = torchvision.models.get_model(meta["arch"], num_classes=meta["num_classes"])
    net.load_state_dict(safetensors.torch.load_file("model.safetensors"))
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from torch import nn

from pipeline import atomic
from pipeline.config import Config
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pipeline.paths import DataPaths, RunPaths
from pipeline.train.checkpoint import torch_save


def model_card(config: Config, num_classes: int, summary: dict[str, Any]) -> dict[str, Any]:
    """model.json: what a user needs to rebuild the network and feed it."""
    classes = json.loads(DataPaths.of(config).classes.read_text())["classes"]
    card: dict[str, Any] = {
        "format": "torchvision state dict (safetensors)",
        "arch": config.model.arch,
        "num_classes": num_classes,
        "classes": [{"index": c["index"], "wnid": c["wnid"], "name": c["name"]} for c in classes],
        "preprocessing": {
            "resize_shorter_side": config.data.val_resize,
            "center_crop": config.data.image_size,
            "interpolation": "bilinear",
            "scale": "RGB values / 255",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "experiment": config.experiment,
        "dataset": config.data.name,
        "final_val_top1": summary.get("final", {}).get("val_top1"),
    }
    if config.model.small_input:
        card["small_input"] = (
            "the stem differs from torchvision's: set model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, "
            "bias=False) and model.maxpool = nn.Identity() before loading"
        )
    return card


def save_final(
    run: RunPaths,
    model: nn.Module,
    config: Config,
    num_classes: int,
    fingerprint: str,
    summary: dict[str, Any],
) -> None:
    """final.pt (the weights, with what evaluating them needs) and the exported model."""
    state = {
        "model": model.state_dict(),
        "arch": config.model.arch,
        "small_input": config.model.small_input,
        "num_classes": num_classes,
        "fingerprint": fingerprint,
        "summary": summary,
    }
    with atomic.atomic_path(run.final) as tmp:
        torch_save(state, tmp)
    export_model(model, model_card(config, num_classes, summary), run.model_dir)


def export_model(model: nn.Module, card: dict[str, Any], folder: Path) -> Path:
    """Write model.safetensors and model.json into `folder`; returns the weights' path."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    # contiguous CPU copies: safetensors refuses views that share memory
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    weights = folder / "model.safetensors"
    with atomic.atomic_path(weights) as tmp:  # bytes first: a failed write is then an OSError
        tmp.write_bytes(save(state, metadata={"arch": card["arch"], "format": "pt"}))
    atomic.write_text(folder / "model.json", json.dumps(card, indent=2) + "\n")
    return weights


def load_exported(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of `folder` with torchvision and safetensors alone, as a user would."""
    import torchvision
    from safetensors.torch import load_file

    card = json.loads((folder / "model.json").read_text())
    model = torchvision.models.get_model(card["arch"], num_classes=card["num_classes"])
    if "small_input" in card:
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), card


def log_model(folder: Path, uri: str, run_id: str) -> str:
    """Log the exported network to MLflow run `run_id` as a PyTorch model, once; its URI, for
    `mlflow.pytorch.load_model`. MLflow's safe default format, a torch.export graph (pt2), is
    traced on a batch of two val crops; an architecture torch.export cannot trace is logged
    pickled instead, with MLflow's warning."""
    import mlflow
    import numpy as np

    from pipeline.tracking import mlflow_client

    client = mlflow_client(uri)
    known = client.get_run(run_id).data.tags.get("model_uri")
    if known:
        return known
    model, card = load_exported(folder)
    crop = card["preprocessing"]["center_crop"]
    example = np.zeros((2, 3, crop, crop), dtype=np.float32)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        try:
            info = mlflow.pytorch.log_model(model, name="model", input_example=example)
        except Exception as error:  # torch.export's limits, not ours
            print(
                f"report: torch.export could not trace {card['arch']} ({type(error).__name__}); "
                "logging the model pickled",
                file=sys.stderr,
            )
            info = mlflow.pytorch.log_model(
                model, name="model", input_example=example, serialization_format="pickle"
            )
        mlflow.log_artifact(str(folder / "model.json"), artifact_path="model-card")
    client.set_tag(run_id, "model_uri", info.model_uri)
    return info.model_uri
