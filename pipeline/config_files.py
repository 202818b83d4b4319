"""Config files: reading one (with `--set` overrides), explaining what is wrong with it, writing
the resolved config the Snakemake rules hand to the stages, and the JSON schema file.

An unknown key or a bad value is an error that names the dotted key, the value and what is
allowed (with the closest allowed key for a typo).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline import atomic
from pipeline.config import Config, ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.json"


def set_dotted(mapping: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = mapping
    for i, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            prefix = ".".join(parents[: i + 1])
            raise ConfigError(f"cannot set '{dotted}': '{prefix}' is {child!r}, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`data.max_side=400` -> ('data.max_side', 400); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects dotted.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot read value {raw!r} as YAML: {err}") from None
    return key.strip(), value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a config file, apply `--set` overrides, validate."""
    mapping = read_yaml(path)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(mapping, key, value)
    return config_from_mapping(mapping, source=str(path))


def config_from_mapping(mapping: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(mapping)
    except ValidationError as err:
        raise ConfigError(_explain(err, source)) from None


def resolve(mapping: dict[str, Any]) -> dict[str, Any]:
    """The validated config with every default filled in, as plain data."""
    return config_from_mapping(mapping).model_dump(mode="json")


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for problem in err.errors():
        loc = [str(p) for p in problem["loc"]]
        key = ".".join(loc)
        if problem["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            close = difflib.get_close_matches(loc[-1], allowed, n=1)
            hint = f" (did you mean '{'.'.join([*loc[:-1], close[0]])}'?)" if close else ""
            lines.append(f"  unknown key '{key}'{hint}; allowed here: {', '.join(sorted(allowed))}")
        elif not loc:  # a check across keys: its message names them
            lines.append(f"  {problem['msg'].removeprefix('Value error, ')}")
        elif problem["type"] == "missing":
            lines.append(f"  missing required key '{key}'")
        else:
            value = problem.get("input")
            lines.append(f"  {key} = {value!r}: {problem['msg']}")
    return "\n".join(lines)


def _allowed_keys(parent: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in parent:
        annotation = model.model_fields[part].annotation
        model = next(
            (a for a in getattr(annotation, "__args__", (annotation,)) if _is_model(a)), model
        )
    return list(model.model_fields)


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def write_resolved(config: Config, path: Path) -> Path:
    """Write the fully resolved config (every default filled in) if its content changed.

    Snakemake rules hand this file to the stages, so a stage sees exactly what the workflow saw,
    including `snakemake --config` overrides. Unchanged content leaves the file untouched.
    """
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    if not (path.is_file() and path.read_text() == text):
        atomic.write_text(path, text)
    return path


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "Generated from pipeline/config.py by `python -m pipeline schema --write`; do not edit."
    )
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
