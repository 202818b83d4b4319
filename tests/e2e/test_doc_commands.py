"""Every shell command in README.md and docs/*.md does what a reader who types it expects to
start: `snakemake` lines plan at least one job (a dry run against the config they name, in a
copy of the workflow, with a tiny data root for any exported one), `python -m pipeline` lines
parse, other Python scripts take the options shown, and `make` targets exist. The Markdown's
code blocks are read by Sybil."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser

from conftest import PROJECT, snakemake_bin, venv_env
from pipeline.cli import build_parser

DOCS = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
SHELLS = ("bash", "sh", "shell", "console")
WORKFLOW = ("Snakefile", "workflow", "config", "profiles")  # what a dry run reads
ASSIGNMENT = re.compile(r"^(\w+)=(.*)$")


def _ignore(example) -> None:
    """Sybil's evaluator: the blocks are checked by the tests below, not run."""


def shell_blocks() -> list[tuple[str, str]]:
    sybil = Sybil(parsers=[CodeBlockParser(language=lang, evaluator=_ignore) for lang in SHELLS])
    blocks = []
    for path in DOCS:
        for example in sybil.parse(path):
            blocks.append((f"{path.relative_to(PROJECT)}:{example.line}", example.parsed))
    return blocks


def commands(block: str) -> tuple[list[list[str]], dict[str, str]]:
    """The commands of a block as argument lists (continuations joined, comments dropped, the
    block's own variables expanded), and the variables it exports."""
    variables: dict[str, str] = {}
    exported: dict[str, str] = {}
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0] in ("source", "cd"):
            continue
        if words[0] == "export" or (len(words) == 1 and ASSIGNMENT.match(words[0])):
            name, value = ASSIGNMENT.match(words[-1]).groups()
            variables[name] = value
            if words[0] == "export":
                exported[name] = value
            continue
        found.append([re.sub(r"\$(\w+)", lambda m: variables.get(m[1], m[0]), w) for w in words])
    return found, exported


BLOCKS = shell_blocks()
COMMANDS = [
    pytest.param(command, exported, id=f"{where}:{' '.join(command)[:60]}")
    for where, block in BLOCKS
    for command, exported in [(c, commands(block)[1]) for c in commands(block)[0]]
]


def test_the_docs_have_shell_commands():
    assert len(COMMANDS) >= 20, [c.id for c in COMMANDS]


@pytest.fixture(scope="module")
def workflow_copy(module_tmp) -> Path:
    """The workflow's files in a folder of their own: dry runs there leave the project alone."""
    copy = module_tmp("workflow")
    for name in WORKFLOW:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, copy / name)
        else:
            shutil.copy(source, copy / name)
    return copy


@pytest.fixture(scope="module")
def tiny_root(module_tmp) -> Path:
    """An ImageNet-shaped tree of one image, for data roots the docs export."""
    from synthetic import write_image_tree

    root = module_tmp("tiny") / "images"
    write_image_tree(root, classes=1, train=1, val=1, sizes=[(40, 40)], plain=True)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(("command", "exported"), COMMANDS)
def test_each_command_in_the_docs_works(command, exported, workflow_copy, tiny_root):
    program = command[0]
    if program == "make":
        check_make(command)
    elif program == "snakemake":
        env = venv_env() | {name: str(tiny_root) for name in exported}
        check_snakemake(command, workflow_copy, env)
    elif program in ("python", "python3") and command[1:2] == ["-m"]:
        assert command[2] == "pipeline", command
        check_pipeline(command[3:])
    elif program in ("python", "python3"):
        check_script(command[1:])
    else:
        pytest.fail(f"no check for `{' '.join(command)}`: add one to {Path(__file__).name}")


def check_make(command: list[str]) -> None:
    for target in command[1:]:
        plan = subprocess.run(["make", "-n", target], cwd=PROJECT, capture_output=True, text=True)
        assert plan.returncode == 0, f"make {target}: {plan.stderr}"


def check_snakemake(command: list[str], workdir: Path, env: dict[str, str]) -> None:
    run = subprocess.run(
        [snakemake_bin(), *command[1:], "--dry-run"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{' '.join(command)}:\n{output[-3000:]}"
    planned = re.search(r"^total\s+(\d+)$", output, flags=re.MULTILINE)
    assert planned and int(planned[1]) >= 1, f"{' '.join(command)} plans no job:\n{output}"


def check_pipeline(arguments: list[str]) -> None:
    try:
        build_parser().parse_args(arguments)
    except SystemExit as exit:
        pytest.fail(f"python -m pipeline {' '.join(arguments)}: exit {exit.code}")


def check_script(arguments: list[str]) -> None:
    script = PROJECT / arguments[0]
    assert script.is_file(), f"{arguments[0]} does not exist"
    shown = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=PROJECT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    for option in (a.split("=")[0] for a in arguments[1:] if a.startswith("--")):
        assert option in shown.stdout, f"{arguments[0]} takes no {option}"
