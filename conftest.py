"""Repository-wide pytest hooks: the notebooks nbval executes in `make test` are kept for the book.

nbval runs every lecture and lab once (pyproject.toml). Its kernels draw figures inline, as Jupyter
does, and what each cell printed and drew is written to _build/executed/ (helpers/book.py) when every
cell of the notebook passed; tests/test_book.py, ordered last, then builds the site from those
executions instead of running every notebook a second time.
"""

from __future__ import annotations

import nbformat
import pytest

from helpers import book


def _is_nbval_cell(item: pytest.Item) -> bool:
    return type(item).__name__ == "IPyNbCell" and hasattr(item, "cell_num")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The book test reuses the executions of the notebooks collected before it: it runs last.
    last = [item for item in items if item.nodeid.startswith("tests/test_book.py::test_book_")]
    items[:] = [item for item in items if item not in last] + last


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    # nbval starts the notebook's kernel while setting up its first cell: start it with inline figures.
    if _is_nbval_cell(item) and getattr(item.parent, "kernel", None) is None:
        with book.inline_figures():
            yield
    else:
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if _is_nbval_cell(item) and report.when == "call":
        ran = item.parent.__dict__.setdefault("_book_outputs", {})
        ran[item.cell_num] = (report.passed, list(getattr(item, "test_outputs", None) or []))


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if not _is_nbval_cell(item) or (nextitem is not None and nextitem.parent is item.parent):
        return
    ran = item.parent.__dict__.get("_book_outputs", {})
    path = item.parent.path
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    if len(ran) != len(code) or not all(passed for passed, _ in ran.values()):
        return  # a cell failed or was not run (-k, -x): the book executes this notebook itself
    for number, cell in enumerate(code):
        cell.outputs = [nbformat.from_dict(dict(output)) for output in ran[number][1]]
        cell.execution_count = number + 1
    if path.resolve().parent.parent == book.ROOT.resolve():
        book.save_executed(path, nb)
