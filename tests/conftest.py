"""Shared test helpers: the test images (generated, and the real ones of the extra tier) and
how to write a config for a test."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config_files import deep_merge
from pipeline.ports import free_port  # noqa: F401 - tests import it from here
from synthetic import ACTIONS, ImageTree, write_ilsvrc_sample, write_image_tree

PROJECT = Path(__file__).resolve().parent.parent
# The extra tier: real ImageNet-derived images, read where they lie and never copied into the
# project. Its tests run whenever the folder exists and are left out (not skipped) otherwise.
REAL_DATA = Path(os.environ.get("PIPELINE_SHARED_DATA", PROJECT.parent / "shared" / "data"))
REAL_FOLDERS = ("imagenette-ci", "ilsvrc2012-sample")
SOURCES = ["synthetic", pytest.param("real", marks=pytest.mark.real_data)]


def real_data_present() -> bool:
    return all((REAL_DATA / name).is_dir() for name in REAL_FOLDERS)


def pytest_report_header(config: pytest.Config) -> str:
    if real_data_present():
        return f"real-data tier: on ({REAL_DATA})"
    return (
        f"real-data tier: off ({REAL_DATA} not found; set PIPELINE_SHARED_DATA to the folder "
        f"that holds {' and '.join(REAL_FOLDERS)} to run it)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without the real images, their tier is deselected: it is an extra, not a failure."""
    if real_data_present():
        return
    deselected = [item for item in items if item.get_closest_marker("real_data")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("real_data")]


@pytest.fixture(scope="module")
def module_tmp(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Path]]:
    """`mktemp` for one module's shared folders, deleted when the module's tests have all passed:
    a training run leaves about half a gigabyte (checkpoints, exported model, its MLflow copy),
    and a whole session's runs would fill a small CI disk. Kept after a failure, to look at."""
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> ImageTree:
    """An ImageNet-shaped folder tree drawn with Pillow (tests/synthetic.py)."""
    return write_image_tree(tmp_path_factory.mktemp("synthetic-tree") / "images")


@pytest.fixture(scope="session", params=SOURCES)
def image_tree(request: pytest.FixtureRequest) -> ImageTree:
    """The synthetic tree, and Imagenette's real 224 px images where the real tier runs."""
    if request.param == "synthetic":
        return request.getfixturevalue("synthetic_tree")
    from PIL import Image

    root = REAL_DATA / "imagenette-ci"
    tree = ImageTree(root)
    for path in sorted(root.glob("train/*/*.JPEG")):
        gray = Image.open(path).mode == "L"  # Imagenette holds some grayscale JPEGs
        tree.train_actions[str(path.relative_to(root))] = ACTIONS["gray" if gray else "rgb"]
    return tree


@pytest.fixture(scope="session", params=SOURCES)
def ilsvrc_sample(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The ILSVRC2012 files in miniature, and the real ones where the real tier runs."""
    if request.param == "real":
        return REAL_DATA / "ilsvrc2012-sample"
    return write_ilsvrc_sample(tmp_path_factory.mktemp("synthetic-ilsvrc") / "sample")


def write_config(folder: Path, data_root: Path, **changes: Any) -> Path:
    """A small config for tests: results under `folder`, data from `data_root`."""
    config = {
        "experiment": "test",
        "results_dir": str(folder / "results"),
        "seed": 0,
        "data": {
            "name": "testdata",
            "root": str(data_root),
            "num_shards": {"train": 2, "val": 1},
            "max_side": 256,
            "image_size": 64,
            "val_resize": 73,
            "loader_workers": 0,
        },
    }
    deep_merge(config, changes)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_stage(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m pipeline ...` in a subprocess, as Snakemake runs it; `env` adds variables."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pipeline {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def venv_env() -> dict[str, str]:
    """The environment for a Snakemake subprocess: this interpreter's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake_bin() -> str:
    found = shutil.which("snakemake", path=str(Path(sys.executable).parent))
    assert found, "snakemake is not installed next to this interpreter"
    return found


def run_snakemake(workdir: Path, *args: str, check: bool = True, **popen: Any):
    """This project's Snakefile with `workdir` as working directory; with `popen` keywords,
    started in the background (a Popen) instead of waited for."""
    command = [
        snakemake_bin(),
        "-s",
        str(PROJECT / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    if popen:
        return subprocess.Popen(command, env=venv_env(), **popen)
    result = subprocess.run(command, capture_output=True, text=True, env=venv_env(), timeout=1500)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def demo_config(folder: Path, shards: Path | None, **changes: Any) -> Path:
    """config/config.yaml (the digits demo) for a 2-epoch run under `folder`, with frequent
    checkpoints; `shards` (built once by a fixture) are linked in instead of rebuilt."""
    config = yaml.safe_load((PROJECT / "config" / "config.yaml").read_text())
    config["results_dir"] = str(folder / "results")
    config["data"]["root"] = str(folder / "digits")
    config["train"].update(epochs=2, checkpoint_every_min=1e-6, log_every=4)
    config["tracking"] = {"system_metrics_s": 1.0}  # a few samples in a short run
    deep_merge(config, changes)
    if shards is not None:
        link = folder / "results" / "data" / "digits"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(shards)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def build_shards(config_path: Path):
    """index + every shard + shard-index, in this process; returns the loaded config."""
    from pipeline import stages
    from pipeline.config_files import load_config

    config = load_config(config_path)
    stages.index(config)
    stages.all_shards(config, jobs=1)
    return config


def planned_rules(dry_run_output: str) -> set[str]:
    """The rules a `snakemake -n` run would execute."""
    return set(re.findall(r"^(?:local)?rule (\w+):$", dry_run_output, flags=re.MULTILINE))


@contextlib.contextmanager
def mlflow_server(port: int, folder: Path, store: Path | None = None):
    """A real `mlflow server` on 127.0.0.1:port with a SQLite store (new in `folder`)."""
    from pipeline import tracking_server

    folder.mkdir(parents=True, exist_ok=True)
    store_uri = f"sqlite:///{(store or folder / 'mlflow.db').resolve()}"
    with tracking_server.mlflow_server(
        store_uri, port, folder / "server.log", folder / "artifacts"
    ) as url:
        yield url


SLURM_TIER = pytest.mark.skipif(
    os.environ.get("PIPELINE_TEST_SLURM") != "1",
    reason="the Slurm tier installs and starts Slurm, MariaDB, munge and PostgreSQL "
    "system-wide, makes network namespaces, writes /etc/slurm and mounts a tmpfs: run it with "
    "PIPELINE_TEST_SLURM=1 (as root on Debian; .ci/run does)",
)
CLUSTER_SCRIPT = PROJECT / "tests" / "cluster" / "cluster.sh"


@pytest.fixture(scope="session")
def slurm():
    """The throwaway two-node Slurm of tests/cluster/cluster.sh, up for the whole session."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("PIPELINE_TEST_SLURM=1, but the throwaway cluster needs root and apt-get")
    up = subprocess.run([str(CLUSTER_SCRIPT), "up"], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, f"cluster up failed:\n{up.stdout}\n{up.stderr}"
    yield
    subprocess.run([str(CLUSTER_SCRIPT), "down"], capture_output=True, timeout=120)
