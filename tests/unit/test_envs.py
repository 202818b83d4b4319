"""The conda env file lists the same pins as envs/requirements.txt (Snakemake copies the conda
file alone, so it cannot include the other by `-r`)."""

from pathlib import Path

import yaml

ENVS = Path(__file__).resolve().parents[2] / "envs"


def _pins(lines):
    return sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def test_conda_env_pins_match_requirements():
    requirements = _pins((ENVS / "requirements.txt").read_text().splitlines())
    conda = yaml.safe_load((ENVS / "pipeline.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == requirements


def test_requirements_are_exact_pins():
    for pin in _pins((ENVS / "requirements.txt").read_text().splitlines()):
        assert "==" in pin, pin
