"""The Colab block of the setup cells (scripts/update_setup_cells.py): current everywhere, and working on a simulated Colab.

Colab is simulated by a fake ``google.colab`` module; the clone is a real ``git clone`` of a local
repository and the ``pip install`` is recorded, not run.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from helpers import labs

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("update_setup_cells", ROOT / "scripts" / "update_setup_cells.py")
U = importlib.util.module_from_spec(spec)
spec.loader.exec_module(U)  # type: ignore[union-attr]

ALL = sorted(p for d in labs.NOTEBOOK_DIRS for p in (ROOT / d).glob("*.ipynb"))


def test_every_notebook_has_the_current_colab_block() -> None:
    # exercises/ included: they get the block from their solutions (`python -m helpers.labs generate --force`).
    wrong = U.outdated(ALL)
    assert not wrong, "run `python scripts/update_setup_cells.py` and regenerate the exercises:\n" + "\n".join(wrong)


def test_the_block_is_found_replaced_and_the_rest_of_the_cell_kept(tmp_path: Path) -> None:
    old = ('import sys\n\nIN_COLAB = "google.colab" in sys.modules\nif IN_COLAB:  # old\n    REPO_URL = "x"\n\n'
           '    sys.path.insert(0, "/content/course")\n\nimport numpy as np\n\nx = 1')
    block, rest = U.split_block(old)
    assert block.endswith('sys.path.insert(0, "/content/course")') and rest == "\nimport numpy as np\n\nx = 1"
    assert U.split_block("import numpy as np") is None
    path = tmp_path / "notebooks" / "05_x.ipynb"
    path.parent.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 05"), nbformat.v4.new_code_cell(old)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    assert U.outdated([path], "https://example.org/a/b")
    assert U.update([path], "https://example.org/a/b") == [path]
    source = nbformat.read(path, as_version=4).cells[1].source
    assert source == U.render_block("https://example.org/a/b") + "\n\nimport numpy as np\n\nx = 1"
    assert not U.outdated([path]) and U.current_url([path]) == "https://example.org/a/b"
    assert U.update([path], "https://example.org/a/b") == [], "a second run changes nothing"


def test_public_addresses_are_recognised() -> None:
    assert U.public_url("git@github.com:someone/course.git\n") == "https://github.com/someone/course"
    assert U.public_url("https://github.com/someone/course.git") == "https://github.com/someone/course"
    assert U.public_url("https://token@gitlab.com/a/b") == "https://gitlab.com/a/b"
    assert U.public_url("/work/main") is None and U.public_url("") is None
    with pytest.raises(ValueError, match="repo url"):
        U.render_block('https://x/"; import os')


def colab_block(course_dir: Path) -> str:
    """The Colab block of lecture 00 as committed, with its clone folder moved to ``course_dir``."""
    source = nbformat.read(ROOT / "notebooks" / "00_introduction.ipynb", as_version=4).cells[1].source
    block, _ = U.split_block(source)
    assert '"/content/course"' in block
    return block.replace('"/content/course"', repr(str(course_dir)))


@pytest.fixture
def colab(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """A fake Colab: ``google.colab`` importable; pip calls recorded (not run), git run for real. Returns the pip calls."""
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)  # type: ignore[attr-defined]
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("COURSE_REPO_URL", raising=False)
    pip_calls: list[list[str]] = []
    real_run = subprocess.run

    def run(command, *args, **kwargs):
        if command[:3] == [sys.executable, "-m", "pip"]:
            pip_calls.append(list(command))
            return subprocess.CompletedProcess(command, 0)
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    return pip_calls


def local_course(tmp_path: Path) -> Path:
    """A small git repository shaped like the course (a helpers/ package), to clone without a network."""
    repo = tmp_path / "origin"
    (repo / "helpers").mkdir(parents=True)
    (repo / "helpers" / "__init__.py").write_text("")
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "course"]):
        subprocess.run(["git", "-C", str(repo), *command], check=True, capture_output=True)
    return repo


def test_on_colab_the_block_clones_installs_and_imports(colab: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    course = tmp_path / "content" / "course"
    monkeypatch.setenv("COURSE_REPO_URL", str(local_course(tmp_path)))
    namespace: dict = {}
    exec(colab_block(course), namespace)
    assert namespace["IN_COLAB"] is True
    assert (course / "helpers" / "__init__.py").exists(), "the course was not cloned"
    assert colab == [[sys.executable, "-m", "pip", "install", "-q", "-e", str(course)]]
    assert sys.path[0] == str(course)
    exec(colab_block(course), {})  # run again (Run All twice): no second clone, which would fail on the existing folder
    assert len(colab) == 2


def test_on_colab_the_placeholder_stops_with_a_clear_message(colab: list[list[str]], tmp_path: Path) -> None:
    block = colab_block(tmp_path / "course").replace(f'"{U.current_url(ALL)}"', f'"{U.PLACEHOLDER}"')
    with pytest.raises(RuntimeError, match="COURSE_REPO_URL"):
        exec(block, {})
    assert not (tmp_path / "course").exists() and colab == [], "nothing is fetched from the placeholder"


def test_on_colab_a_failed_clone_says_what_to_set(colab: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_REPO_URL", str(tmp_path / "no-such-repository"))
    with pytest.raises(RuntimeError, match="could not clone the course .*set COURSE_REPO_URL"):
        exec(colab_block(tmp_path / "course"), {})
    assert colab == []


def test_outside_colab_the_block_does_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    namespace: dict = {}
    exec(colab_block(tmp_path / "course"), namespace)
    assert namespace["IN_COLAB"] is False and calls == [] and not (tmp_path / "course").exists()
