"""The figures the docs quote from files in the repository (benchmark JSON, the study's runs,
the Slurm profile, the configs, the workflow's rules) are what those files say now: the docs'
cog blocks (docs/figures.py and its neighbours) would write nothing new."""

import subprocess
import sys

from conftest import PROJECT

COGGED = ["README.md", "docs/design.md", "docs/scaling.md", "docs/performance.md",
          "docs/reproduction.md", "profiles/slurm/config.yaml"]  # fmt: skip


def test_every_generated_figure_matches_its_source():
    check = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", "-I", "docs", *COGGED],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, (
        f"{check.stdout}{check.stderr}\nthe docs quote figures their sources no longer hold: "
        "run `make docs` and commit the result"
    )


def test_the_list_of_cogged_files_is_the_makefiles():
    makefile = (PROJECT / "Makefile").read_text()
    assert f"COGGED := {' '.join(COGGED)}" in makefile
