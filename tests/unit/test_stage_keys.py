"""The one declaration of which config keys each stage depends on."""

import pytest
from pydantic import BaseModel

from pipeline.config import Config
from pipeline.config_files import config_from_mapping
from pipeline.stage_keys import BOOKKEEPING, STAGE_KEYS, stage_fingerprint, stage_values


def config(**changes) -> Config:
    mapping = {"experiment": "keys", "data": {"name": "d", "root": "/images"}}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        mapping.setdefault(section, {})[key] = value
    return config_from_mapping(mapping)


def test_every_declared_key_exists_and_bookkeeping_lies_inside_a_train_section():
    base = config()
    for stage, keys in STAGE_KEYS.items():
        assert stage_values(base, stage).keys() == set(keys), stage
    for dotted in BOOKKEEPING:
        section, key = dotted.split(".")
        assert key in type(getattr(base, section)).model_fields
        assert section in STAGE_KEYS["train"]


def test_sections_are_dumped_without_their_bookkeeping_keys():
    train = stage_values(config(), "train")["train"]
    assert "epochs" in train and "deterministic" in train
    assert not {f"train.{k}" for k in train} & BOOKKEEPING
    assert stage_values(config(), "train")["launcher.world_size"] == 1


@pytest.mark.parametrize(
    ("change", "changed"),
    [
        ({"train__epochs": 3}, {"train"}),
        ({"optimizer__lr_rmsprop": 1e-3}, {"train"}),
        ({"launcher__tasks_per_node": 2}, {"train"}),
        ({"data__image_size": 64}, {"train"}),
        ({"data__jpeg_quality": 80}, {"shard"}),
        ({"data__shuffle_seed": 1}, {"demo_data", "shard"}),
        ({"data__layout": "folder"}, {"index"}),
        ({"train__log_every": 1}, set()),
        ({"train__compile_optimizer": True}, set()),
        ({"launcher__partition": "gpu"}, set()),
        ({"data__loader_workers": 0}, set()),
    ],
)
def test_a_setting_changes_the_fingerprint_of_exactly_its_stages(change, changed):
    before, after = config(), config(**change)
    moved = {s for s in STAGE_KEYS if stage_fingerprint(before, s) != stage_fingerprint(after, s)}
    assert moved == changed


def test_every_setting_is_a_stage_key_or_declared_as_not_changing_results():
    """A new config key must be placed: in a stage's keys, in BOOKKEEPING, or below."""
    declared = {k for keys in STAGE_KEYS.values() for k in keys} | BOOKKEEPING
    runtime = {
        # Names and places: what outputs are called and where they go, not what they hold.
        "experiment",
        "label",
        "results_dir",
        "experiments",
        "sweep",
        "tracking",
        # How training runs; the launcher changes results only through launcher.world_size.
        "launcher",
        "data.loader_workers",
        # Part of every shard's file name, so a change means other files altogether.
        "data.num_shards",
    }

    def covered(dotted: str) -> bool:
        parts = dotted.split(".")
        return any(".".join(parts[:i]) in declared | runtime for i in range(1, len(parts) + 1))

    def leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
        found = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            nested = [
                a
                for a in getattr(annotation, "__args__", (annotation,))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            if nested and not covered(prefix + name):
                found += leaves(nested[0], f"{prefix}{name}.")
            else:
                found.append(prefix + name)
        return found

    assert [key for key in leaves(Config) if not covered(key)] == []
