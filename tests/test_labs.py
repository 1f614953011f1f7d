"""Lab machinery: blanking, generation, refusing to overwrite edits, sync, copy to work/."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from helpers import labs

SOLUTION_CODE = """def f(x):
    \"\"\"Double x.\"\"\"
    ### BEGIN SOLUTION
    y = 2 * x
    return y
    ### END SOLUTION
"""


def test_blank_source_keeps_indentation_and_surroundings() -> None:
    out = labs.blank_source(SOLUTION_CODE, "code")
    assert out == 'def f(x):\n    """Double x."""\n    # YOUR CODE HERE\n    raise NotImplementedError()\n'
    assert labs.blank_source("a\n### BEGIN SOLUTION\nsecret\n### END SOLUTION\nb", "markdown") == "a\nYOUR ANSWER HERE\nb"
    assert labs.blank_source("no markers", "code") == "no markers"


def test_the_blank_names_its_exercise() -> None:
    out = labs.blank_source(SOLUTION_CODE, "code", exercise="Exercise 3 · Double it")
    line = out.split("\n")[3]
    assert line.startswith("    raise NotImplementedError('Exercise 3 · Double it is not done yet"), line
    with pytest.raises(NotImplementedError, match="Exercise 3 · Double it is not done yet"):
        exec(out + "\nf(2)\n", {})


@pytest.mark.parametrize(
    "source", ["### BEGIN SOLUTION\nx", "### END SOLUTION", "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"]
)
def test_unbalanced_markers_are_errors(source: str) -> None:
    with pytest.raises(labs.LabError, match="SOLUTION"):
        labs.blank_source(source, "code", where="demo cell 3")


def _make_solution(folder: Path, name: str = "99_demo_lab.ipynb", body: str = SOLUTION_CODE) -> Path:
    nb = nbformat.v4.new_notebook()
    heading = nbformat.v4.new_markdown_cell("# Demo\n\n## Exercise 1 · Double")
    nb.cells = [heading, nbformat.v4.new_code_cell(body), nbformat.v4.new_code_cell("f(2)")]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="4")]
    nb.cells[2].execution_count = 3
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nb, path)
    return path


def test_generate_blanks_cleans_and_marks(tmp_path: Path) -> None:
    _make_solution(tmp_path / "solutions")
    written = labs.generate_all(tmp_path / "solutions", tmp_path / "exercises")
    nb = nbformat.read(written[0], as_version=4)
    nbformat.validate(nb)
    text = written[0].read_text()
    assert "2 * x" not in text and "raise NotImplementedError('Exercise 1 · Double is not done yet" in text
    assert nb.cells[0].id == labs.NOTE_ID and "make work" in nb.cells[0].source
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert not labs.was_edited(written[0])
    assert labs.out_of_sync(tmp_path / "solutions", tmp_path / "exercises") == []


def test_a_solution_without_blocks_is_an_error(tmp_path: Path) -> None:
    _make_solution(tmp_path / "solutions", body="x = 1")
    with pytest.raises(labs.LabError, match="no ### BEGIN SOLUTION"):
        labs.generate_all(tmp_path / "solutions", tmp_path / "exercises")


def test_regeneration_updates_untouched_but_refuses_edited_exercises(tmp_path: Path) -> None:
    solution = _make_solution(tmp_path / "solutions")
    target = labs.generate_all(tmp_path / "solutions", tmp_path / "exercises")[0]
    # The solution changes: an untouched exercise is simply regenerated.
    _make_solution(tmp_path / "solutions", body=SOLUTION_CODE.replace("Double", "Twice"))
    assert labs.generate_all(tmp_path / "solutions", tmp_path / "exercises") == [target]
    assert "Twice" in target.read_text()
    # A learner edits the exercise: regeneration refuses without --force and keeps the edit.
    nb = nbformat.read(target, as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace("# YOUR CODE HERE", "return x + x  # my answer")
    nbformat.write(nb, target)
    _make_solution(tmp_path / "solutions", body=SOLUTION_CODE.replace("Double", "Thrice"))
    with pytest.raises(labs.LabError, match="--force"):
        labs.generate_all(tmp_path / "solutions", tmp_path / "exercises")
    assert "my answer" in target.read_text()
    labs.generate_all(tmp_path / "solutions", tmp_path / "exercises", force=True)
    assert "my answer" not in target.read_text() and "Thrice" in target.read_text()
    assert solution.exists()


def test_out_of_sync_reports_stale_missing_and_orphans(tmp_path: Path) -> None:
    _make_solution(tmp_path / "solutions")
    assert labs.out_of_sync(tmp_path / "solutions", tmp_path / "exercises") == ["missing exercises/99_demo_lab.ipynb"]
    labs.generate_all(tmp_path / "solutions", tmp_path / "exercises")
    _make_solution(tmp_path / "solutions", body=SOLUTION_CODE + "\n# changed")
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "exercises" / "98_orphan_lab.ipynb")
    problems = labs.out_of_sync(tmp_path / "solutions", tmp_path / "exercises")
    assert problems == ["stale exercises/99_demo_lab.ipynb", "orphan exercises/98_orphan_lab.ipynb (no solution)"]


def test_strip_removes_outputs(tmp_path: Path) -> None:
    path = _make_solution(tmp_path)
    assert labs.strip([tmp_path]) == [path]
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[2].outputs == [] and nb.cells[2].execution_count is None
    assert labs.strip([tmp_path]) == []


def test_copy_to_work_never_overwrites_without_force(tmp_path: Path) -> None:
    exercises = tmp_path / "exercises"
    _make_solution(tmp_path / "solutions")
    labs.generate_all(tmp_path / "solutions", exercises)
    work = tmp_path / "work"
    assert [p.name for p in labs.copy_to_work(exercises, work)] == ["99_demo_lab.ipynb"]
    (work / "99_demo_lab.ipynb").write_text("my work")
    assert labs.copy_to_work(exercises, work) == []
    assert (work / "99_demo_lab.ipynb").read_text() == "my work"
    assert len(labs.copy_to_work(exercises, work, force=True)) == 1


def test_repository_exercises_are_in_sync_with_solutions() -> None:
    assert labs.out_of_sync() == [], "run `make exercises`"
    assert sorted(p.name for p in labs.SOLUTIONS.glob("*_lab.ipynb")), "no labs found"
