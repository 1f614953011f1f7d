"""The environment files agree with each other and pin what the course promises."""

from __future__ import annotations

import re
import sys

import torch

from .conftest import ROOT


def requirement_lines() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_every_requirement_is_pinned_exactly() -> None:
    for line in requirement_lines():
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.+\-]*", line), f"not pinned with ==: {line!r}"


def test_torch_is_pinned_to_the_cpu_wheel_version_and_no_torchvision() -> None:
    names = {line.split("==")[0].lower(): line.split("==")[1] for line in requirement_lines()}
    assert names["torch"] == "2.13.0"
    assert "torchvision" not in names
    assert torch.__version__.split("+")[0] == "2.13.0"


def test_environment_yml_installs_exactly_requirements_txt() -> None:
    text = (ROOT / "environment.yml").read_text()
    body = [line.split("#")[0].rstrip() for line in text.splitlines() if line.split("#")[0].strip()]
    body = body[body.index("dependencies:") + 1 :]
    # Python itself and pip come from conda; every library comes from requirements.txt.
    conda_deps = [line.strip()[2:].strip() for line in body if re.match(r"^  - ", line)]
    assert conda_deps == ["python=3.11", "pip", "pip:"], conda_deps
    pip_deps = [line.strip()[2:].strip() for line in body if re.match(r"^      - ", line)]
    assert pip_deps == ["-r requirements.txt"], pip_deps


def test_python_version_matches_environment() -> None:
    assert "python=3.11" in (ROOT / "environment.yml").read_text()
    assert sys.version_info >= (3, 10)


def test_pyproject_runs_notebooks_under_nbval_lax() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '"notebooks", "solutions"' in text and "--nbval-lax" in text


def test_gitignore_keeps_generated_things_out() -> None:
    ignored = (ROOT / ".gitignore").read_text().split()
    for entry in (".venv/", "work/", "__pycache__/", ".ipynb_checkpoints/"):
        assert entry in ignored, entry
