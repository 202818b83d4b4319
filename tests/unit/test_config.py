import itertools
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import ConfigError
from pipeline.config_files import (
    SCHEMA_PATH,
    config_from_mapping,
    deep_merge,
    load_config,
    parse_override,
    schema_text,
)
from pipeline.config_reference import REFERENCE_PATH, reference_text
from pipeline.experiments import expand_experiments

PROJECT = Path(__file__).resolve().parents[2]

MINIMAL = {"experiment": "x", "data": {"name": "d", "root": "/data"}}


def test_defaults_are_filled_in():
    config = config_from_mapping(MINIMAL)
    assert config.data.layout == "auto"
    assert config.data.num_shards.train == 8
    assert config.results_dir == "results"


def test_unknown_key_names_the_key_and_suggests_the_close_one():
    with pytest.raises(ConfigError) as err:
        config_from_mapping({**MINIMAL, "data": {**MINIMAL["data"], "jpeg_qualty": 80}})
    text = str(err.value)
    assert "unknown key 'data.jpeg_qualty'" in text
    assert "did you mean 'data.jpeg_quality'" in text
    assert "max_side" in text  # the allowed keys are listed


def test_unknown_nested_key_lists_that_sections_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'data.num_shards.test'.*train, val"):
        config_from_mapping({**MINIMAL, "data": {**MINIMAL["data"], "num_shards": {"test": 1}}})


def test_bad_value_names_key_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        config_from_mapping({**MINIMAL, "data": {**MINIMAL["data"], "layout": "zip"}})
    text = str(err.value)
    assert "data.layout = 'zip'" in text
    assert "'auto', 'folder', 'kaggle', 'devkit' or 'tar'" in text


def test_out_of_range_value():
    with pytest.raises(ConfigError, match=r"data.jpeg_quality = 101: .*less than or equal to 100"):
        config_from_mapping({**MINIMAL, "data": {**MINIMAL["data"], "jpeg_quality": 101}})


def test_missing_required_key():
    with pytest.raises(ConfigError, match="missing required key 'data.root'"):
        config_from_mapping({"experiment": "x", "data": {"name": "d"}})


def test_overrides_are_dotted_and_yaml_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    config = load_config(path, ["data.max_side=400", "data.classes_file=/x/classes.txt"])
    assert config.data.max_side == 400
    assert config.data.classes_file == "/x/classes.txt"
    assert parse_override("data.num_shards={train: 3}") == ("data.num_shards", {"train": 3})
    with pytest.raises(ConfigError, match="expects dotted.key=value"):
        parse_override("data.max_side")
    with pytest.raises(ConfigError, match="unknown key 'data.nope'"):
        load_config(path, ["data.nope=1"])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "data": {**MINIMAL["data"], "max_side": "big"}}))
    assert main(["index", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.max_side = 'big'" in err
    assert "Traceback" not in err


def test_schema_file_is_in_sync_with_the_models():
    assert SCHEMA_PATH.read_text() == schema_text(), (
        "workflow/schemas/config.schema.json is stale: run `python -m pipeline schema --write`"
    )


def test_config_reference_lists_every_key_and_is_in_sync():
    text = REFERENCE_PATH.read_text()
    assert text == reference_text(), (
        "config/README.md is stale: run `python -m pipeline schema --write`"
    )
    for dotted in ("experiment", "data.root", "optimizer.eeta", "train.label_smoothing"):
        assert f"| `{dotted}` |" in text
    assert "| `schedule.name` | `slow_start` \\| `goyal` \\| `poly` |" in text


def _overlay_base(path: Path) -> Path:
    """An overlay (a config without `experiment`, given after its base: `--configfile base.yaml
    base-<variant>.yaml`) is named after its base config."""
    for base in sorted(path.parent.glob("*.yaml"), key=lambda p: -len(p.name)):
        if base != path and path.stem.startswith(base.stem + "-"):
            return base
    raise AssertionError(f"{path} has no `experiment` and no base config named like it")


@pytest.mark.parametrize("path", sorted((PROJECT / "config").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    mapping = yaml.safe_load(path.read_text())
    if "experiment" in mapping:
        load_config(path)
        return
    base = _overlay_base(path)
    merged = deep_merge(yaml.safe_load(base.read_text()), mapping)  # as Snakemake merges them
    base_data = load_config(base).data
    for experiment in expand_experiments(config_from_mapping(merged, source=str(path))):
        assert experiment.data == base_data  # an overlay reuses the base's shards


OPTIMIZERS = ("hybrid", "sgd", "rmsprop", "lars")
SCHEDULES = ("slow_start", "goyal", "poly")
REJECTED = {("hybrid", "poly"), ("rmsprop", "poly"), ("lars", "goyal")}


@pytest.mark.parametrize(("optimizer", "schedule"), list(itertools.product(OPTIMIZERS, SCHEDULES)))
def test_optimizer_and_schedule_pairs_are_accepted_or_refused_by_name(optimizer, schedule):
    mapping = {
        **MINIMAL,
        "optimizer": {"name": optimizer},
        "schedule": {"name": schedule, "base_lr": 1.0},
    }
    if (optimizer, schedule) not in REJECTED:
        assert config_from_mapping(mapping).optimizer.name == optimizer
        return
    with pytest.raises(ConfigError) as refused:
        config_from_mapping(mapping)
    message = str(refused.value)
    assert f"optimizer.name = '{optimizer}'" in message
    assert f"schedule.name = '{schedule}'" in message
    assert "Use " in message  # and what to do instead


def test_lars_needs_a_learning_rate_of_its_own():
    with pytest.raises(ConfigError, match="needs schedule.base_lr or schedule.reference_lr"):
        config_from_mapping({**MINIMAL, "optimizer": {"name": "lars"}})
    sized = {"name": "poly", "reference_lr": 31.2, "reference_batch": 32768}
    config = config_from_mapping({**MINIMAL, "optimizer": {"name": "lars"}, "schedule": sized})
    assert config.base_lr == pytest.approx(31.2 * config.global_batch / 32768)
