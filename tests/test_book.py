"""The rendered book (helpers/book.py, `make book`): its parts, and the whole site built from the notebooks.

test_book_builds_every_chapter runs last (conftest.py at the repository root): in `make test` it reuses
the executions nbval made of every lecture and lab; run alone, it executes them itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from helpers import book, labs

from .conftest import ROOT

MAKES_FIGURES = re.compile(r"\bplt\.(show|subplots|figure|imshow|plot|hist|bar)\(|\bplotting\.\w+\(")


def write_notebook(path: Path, cells: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def fake_course(root: Path) -> Path:
    (root / "helpers").mkdir(parents=True)
    (root / "helpers" / "x.py").write_text("X = 1\n")
    write_notebook(root / "notebooks" / "00_intro.ipynb", [new_markdown_cell("# 00 · Intro\n\ntext"), new_code_cell("print(1)")])
    write_notebook(root / "notebooks" / "02_two.ipynb", [new_markdown_cell("# 02 · Two | pipes"), new_code_cell("print(2)")])
    write_notebook(root / "solutions" / "00_intro_lab.ipynb", [new_markdown_cell("# 00 · Intro lab"), new_code_cell("x = 1")])
    write_notebook(root / "solutions" / "03_three_lab.ipynb", [new_markdown_cell("# 03 · Three lab"), new_code_cell("x = 3")])
    write_notebook(root / "notebooks" / "README.ipynb", [new_markdown_cell("# not a chapter")])
    return root


def test_chapters_are_found_by_glob_and_paired_by_number(tmp_path: Path) -> None:
    root = fake_course(tmp_path)
    found = book.chapters(root)
    assert [(c.number, c.title) for c in found] == [("00", "00 · Intro"), ("02", "02 · Two | pipes"), ("03", "03 · Three lab")]
    assert found[0].lecture.name == "00_intro.ipynb" and found[0].lab.name == "00_intro_lab.ipynb"
    assert found[1].lab is None and found[2].lecture is None
    assert [p.name for p in book.book_notebooks(root)] == ["00_intro.ipynb", "00_intro_lab.ipynb", "02_two.ipynb", "03_three_lab.ipynb"]
    index = book.index_markdown(found)
    for entry in ("notebooks/00_intro", "solutions/00_intro_lab", "notebooks/02_two", "solutions/03_three_lab"):
        assert f"\n{entry}\n" in index, entry
    assert "Two \\| pipes" in index, "a | in a title must not break the table"


def test_the_real_course_has_every_notebook_in_the_book() -> None:
    expected = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted((ROOT / "solutions").glob("[0-9][0-9]_*_lab.ipynb"))
    assert sorted(book.book_notebooks()) == sorted(expected)
    assert len(book.chapters()) >= 7


def test_an_execution_is_reused_only_while_the_notebook_and_helpers_are_unchanged(tmp_path: Path) -> None:
    root = fake_course(tmp_path)
    path = root / "notebooks" / "00_intro.ipynb"
    executed = tmp_path / "executed"
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [new_output("stream", name="stdout", text="1\n")]
    assert book.load_executed(path, root, executed) is None
    book.save_executed(path, nb, root, executed)
    kept = book.load_executed(path, root, executed)
    assert kept is not None and kept.cells[1].outputs[0].text == "1\n"
    (root / "helpers" / "x.py").write_text("X = 2\n")
    assert book.load_executed(path, root, executed) is None, "a change in helpers/ makes the kept execution stale"
    book.save_executed(path, nb, root, executed)
    write_notebook(path, [new_markdown_cell("# 00 · Intro"), new_code_cell("print(10)")])
    assert book.load_executed(path, root, executed) is None, "a change in the notebook makes the kept execution stale"


def test_inline_figures_sets_and_restores_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("MPLBACKEND", "Agg")
    with book.inline_figures():
        assert os.environ["MPLBACKEND"] == book.INLINE_BACKEND
    assert os.environ["MPLBACKEND"] == "Agg"
    monkeypatch.delenv("MPLBACKEND")
    with book.inline_figures():
        pass
    assert "MPLBACKEND" not in os.environ


def test_pages_collapse_solutions_and_replace_widgets_by_a_note() -> None:
    solution = new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION")
    check = new_code_cell("checks.check_f(f)", metadata={"tags": ["check"]})
    widget = new_code_cell("explorer()")
    widget.outputs = [new_output("display_data", data={book.WIDGET_MIME: {"model_id": "abc"}, "text/plain": "VBox(children=(...))"})]
    bar = new_code_cell("train()")
    bar.outputs = [new_output("display_data", data={book.WIDGET_MIME: {"model_id": "d"}, "text/plain": "100%|##| 5/5"})]
    nb = new_notebook(cells=[solution, check, widget, bar])
    page = book.for_the_page(nb, is_lab=True)
    assert page.cells[0].metadata["tags"] == ["hide-input"]
    assert page.cells[1].metadata["tags"] == ["check"], "only solution cells are collapsed"
    assert page.cells[2].outputs[0].data == {"text/markdown": book.WIDGET_NOTE}
    assert page.cells[3].outputs[0].data == {"text/plain": "100%|##| 5/5"}, "a progress bar keeps its text"
    assert "tags" not in nb.cells[0].metadata and book.WIDGET_MIME in nb.cells[2].outputs[0].data, "the input is not changed"
    assert "tags" not in book.for_the_page(nb, is_lab=False).cells[0].metadata, "a lecture shows all its code"


def test_broken_links_finds_missing_pages_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "_static").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="sub/a.html#s1">ok</a><a href="sub/a.html#nope">bad anchor</a><a href="missing.html">bad</a>'
        '<a href="https://example.org/x">external</a><img src="sub/fig.png"><a href="#top">self</a><p id="top"></p>'
    )
    (tmp_path / "sub" / "a.html").write_text('<h1 id="s1">A</h1><a href="../index.html">up</a><img src="gone.png">')
    (tmp_path / "sub" / "fig.png").write_bytes(b"png")
    (tmp_path / "_static" / "template.html").write_text('<a href="{{ pathto(x) }}">template</a>')
    assert sorted(book.broken_links(tmp_path)) == [
        "index.html -> missing.html",
        "index.html -> sub/a.html#nope (no such anchor)",
        "sub/a.html -> gone.png",
    ]


def readme_page_links() -> list[str]:
    """The rendered pages README's syllabus links to, as paths under _build/html (e.g. ``notebooks/00_introduction.html``)."""
    return re.findall(r"\]\(_build/html/([^)#]+\.html)\)", (ROOT / "README.md").read_text())


def test_readme_links_the_pages_of_notebooks_that_exist() -> None:
    links = readme_page_links()
    assert links, "README's syllabus links no rendered page"
    for link in links:
        assert (ROOT / link).with_suffix(".ipynb").exists(), f"README links _build/html/{link}, but there is no {link[:-5]}.ipynb"


def solution_cells(path: Path) -> int:
    return sum(1 for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" and labs.has_solution(c.source))


@pytest.mark.slow
def test_book_builds_every_chapter_with_its_figures_and_no_broken_links() -> None:
    index = book.build()
    html = index.parent
    assert index.exists()
    home = book.parse_page(index)
    for path in book.book_notebooks():
        relative = path.relative_to(ROOT)
        page = html / relative.with_suffix(".html")
        assert page.exists(), f"no page for {relative}"
        assert str(relative.with_suffix(".html")) in home.links, f"the home page does not link {relative}"
        executed = book.load_executed(path)
        assert executed is not None, f"{relative} has no current execution"
        figures = book.count_images(executed)
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        if MAKES_FIGURES.search(source):
            assert figures > 0, f"{relative} draws figures but its execution has no image output (figure backend?)"
        shown = book.parse_page(page).images
        assert shown >= figures, f"{relative}: {figures} figures executed, {shown} <img> on its page"
        if path.parent.name == "solutions":
            text = page.read_text(encoding="utf-8")
            collapsed = text.count('class="cell tag_hide-input')
            assert collapsed >= solution_cells(path) > 0, f"{relative}: {collapsed} collapsed cells, {solution_cells(path)} solutions"
    for link in readme_page_links():
        assert (html / link).exists(), f"README links _build/html/{link}, which the build did not write"
    broken = book.broken_links(html)
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_the_book_test_is_ordered_after_the_notebooks_it_reuses() -> None:
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)  # type: ignore[union-attr]
    names = ["tests/test_book.py::test_book_builds_every_chapter", "tests/test_a.py::test_x", "notebooks/00_a.ipynb::Cell 0",
             "solutions/00_a_lab.ipynb::Cell 0", "tests/test_book.py::test_broken_links"]
    items = [types.SimpleNamespace(nodeid=name) for name in names]
    root_conftest.pytest_collection_modifyitems(None, items)
    assert [item.nodeid for item in items] == names[1:] + names[:1]
