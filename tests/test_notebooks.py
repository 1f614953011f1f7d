"""Notebooks are committed clean, follow the course conventions, and every lab check fails on its blank.

The notebooks themselves are executed by nbval (see pyproject.toml: `notebooks` and `solutions`
are test paths, run with --nbval-lax).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import labs

from .conftest import ROOT

ALL_NOTEBOOKS = sorted(p for d in labs.NOTEBOOK_DIRS for p in (ROOT / d).glob("*.ipynb"))
LECTURES = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*_lab.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*_lab.ipynb"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_there_are_notebooks() -> None:
    assert LECTURES and SOLUTIONS and EXERCISES


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=rel)
def test_notebook_is_clean_valid_and_python3(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} has outputs: run `make clean-notebooks`"
            assert cell.execution_count is None, f"cell {index} has an execution count"
    assert path.read_text() == labs.render(labs.clean(nbformat.read(path, as_version=4))), "run `make clean-notebooks`"


@pytest.mark.parametrize("path", LECTURES + SOLUTIONS, ids=rel)
def test_notebook_follows_the_conventions(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "Run time" in first.source or "run time" in first.source.lower()
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "helpers.setup(" in code, "the setup cell must call helpers.setup()"
    assert "assert " in code, "a notebook asserts its claims"
    assert "!pip" not in code and "urlopen" not in code and "full=True" not in code, "no network at run time"
    if path.parent.name == "notebooks":
        last = nb.cells[-1].source
        assert "References" in last and "Lab" in last, "a lecture ends with references and a link to its lab"


@pytest.mark.parametrize("path", SOLUTIONS, ids=rel)
def test_lab_has_exercises_each_followed_by_checks(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    solution_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and labs.has_solution(c.source)]
    check_cells = [i for i, c in enumerate(nb.cells) if "check" in c.metadata.get("tags", [])]
    assert len(check_cells) >= 4 and len(solution_cells) >= 4
    for i in solution_cells:
        later_checks = [j for j in check_cells if j > i]
        assert later_checks and later_checks[0] - i <= 2, f"solution cell {i} has no check cell right after it"


@pytest.mark.parametrize("path", EXERCISES, ids=rel)
def test_every_check_cell_fails_on_the_blank_exercise(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    checks = [(i, c) for i, c in enumerate(nb.cells) if "check" in c.metadata.get("tags", [])]
    assert checks
    for index, cell in checks:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert errors, f"check cell {index} passed on the blank exercise: it is vacuous"
        assert errors[0].ename in {"NotImplementedError", "CheckFailure", "AssertionError"}, (
            f"check cell {index} failed with {errors[0].ename}: {errors[0].evalue}; "
            "a check must fail because the exercise is blank, not because of a missing name"
        )
    # The cells that are not exercises or checks (setup, imports) run without error.
    first_exercise = next(i for i, c in enumerate(nb.cells) if "YOUR CODE HERE" in c.source)
    for index, cell in enumerate(nb.cells[:first_exercise]):
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], f"setup cell {index} failed"


def bare_asserts(source: str) -> list[int]:
    """Line numbers of `assert` statements without a message in a code cell (IPython magics skipped)."""
    import ast

    lines = [("pass  # " + line) if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    tree = ast.parse("\n".join(lines))
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert) and node.msg is None]


def test_bare_asserts_are_found() -> None:
    assert bare_asserts("x = 1\nassert x == 1\nassert x, 'x is set'\n%timeit x") == [2]


@pytest.mark.parametrize("path", LECTURES + SOLUTIONS, ids=rel)
def test_every_assert_tells_the_learner_what_went_wrong(path: Path) -> None:
    # A bare `AssertionError:` in the browser tells a learner nothing: every claim says what was
    # expected, what came out, and what may explain it.
    nb = nbformat.read(path, as_version=4)
    bare = [(i, line) for i, c in enumerate(nb.cells) if c.cell_type == "code" for line in bare_asserts(c.source)]
    assert not bare, f"asserts without a message (cell, line): {bare}"
