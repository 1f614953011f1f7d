"""Lab machinery: generate exercises from solutions, keep notebooks clean, copy labs to work/.

Solutions (``solutions/NN_topic_lab.ipynb``) are the source. In a code cell, the lines between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` become ``# YOUR CODE HERE`` and
``raise NotImplementedError(...)`` at the same indentation (nbgrader's convention), the error naming
the exercise (the latest ``## Exercise N`` or ``## Open task`` heading above the cell); in a markdown
cell they become ``YOUR ANSWER HERE``. Usage (or the Makefile targets that wrap it)::

    python -m helpers.labs generate [--force]   # solutions/ -> exercises/
    python -m helpers.labs check                # exit 1 if exercises/ is out of sync
    python -m helpers.labs strip [PATHS...]     # remove outputs from notebooks
    python -m helpers.labs copy [--force]       # exercises/ -> work/ for you to edit

Generation never overwrites an exercise that somebody edited after it was generated (its cells
no longer match the fingerprint stored in its metadata) unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
EXERCISES = ROOT / "exercises"
WORK = ROOT / "work"
NOTEBOOK_DIRS = ("notebooks", "solutions", "exercises")

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION\s*$")
END = re.compile(r"^[ \t]*### END SOLUTION\s*$")
CODE_BLANK = ("# YOUR CODE HERE", "raise NotImplementedError()")
EXERCISE_HEADING = re.compile(r"^#{1,4}\s+((?:Exercise|Open task)\b[^\n]*)", re.MULTILINE)
MARKDOWN_BLANK = "YOUR ANSWER HERE"
NOTE_ID = "generated-note"


class LabError(ValueError):
    """A malformed solution notebook or a refused overwrite."""


def not_done_error(exercise: str | None) -> str:
    """The line that stands in for a solution: ``raise NotImplementedError(...)`` naming ``exercise``."""
    if not exercise:
        return CODE_BLANK[1]
    message = f"{exercise} is not done yet (replace this line with your code)"
    return f"raise NotImplementedError({message!r})"


def blank_source(source: str, cell_type: str, where: str = "cell", exercise: str | None = None) -> str:
    """Replace every solution block of ``source`` by the blank of its ``cell_type``.

    ``exercise`` (e.g. ``"Exercise 3 · The gradual schedule"``) is named in the NotImplementedError.
    """
    out: list[str] = []
    inside: str | None = None
    for number, line in enumerate(source.split("\n"), start=1):
        begin = BEGIN.match(line)
        if begin:
            if inside is not None:
                raise LabError(f"{where}, line {number}: BEGIN SOLUTION inside another solution block")
            inside = begin.group("indent")
            if cell_type == "code":
                out.extend(inside + text for text in (CODE_BLANK[0], not_done_error(exercise)))
            else:
                out.append(MARKDOWN_BLANK)
        elif END.match(line):
            if inside is None:
                raise LabError(f"{where}, line {number}: END SOLUTION without BEGIN SOLUTION")
            inside = None
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise LabError(f"{where}: BEGIN SOLUTION is never closed by END SOLUTION")
    return "\n".join(out)


def has_solution(source: str) -> bool:
    return any(BEGIN.match(line) for line in source.split("\n"))


def fingerprint(nb: NotebookNode) -> str:
    """sha256 of the notebook's cell types and sources: what a learner edits."""
    cells = [[cell.cell_type, cell.source] for cell in nb.cells]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def clean(nb: NotebookNode) -> NotebookNode:
    """Strip outputs, execution counts and run-time metadata; set the python3 kernel (in place)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "collapsed", "scrolled", "ExecuteTime"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def generate(solution_path: Path) -> NotebookNode:
    """The exercise notebook for ``solution_path`` (not written)."""
    solution = nbformat.read(solution_path, as_version=4)
    nb = clean(copy.deepcopy(solution))
    blanks, exercise = 0, None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            headings = EXERCISE_HEADING.findall(cell.source)
            exercise = headings[-1].strip() if headings else exercise
        if has_solution(cell.source):
            cell.source = blank_source(
                cell.source, cell.cell_type, where=f"{solution_path.name} cell {index}", exercise=exercise
            )
            blanks += 1
    if blanks == 0:
        raise LabError(f"{solution_path} has no ### BEGIN SOLUTION block")
    note = nbformat.v4.new_markdown_cell(
        f"> **Exercise notebook**, generated from `solutions/{solution_path.name}` by `make exercises`; "
        "do not edit it here. Run `make work` and open your own copy in `work/`, where nothing is "
        "ever overwritten. Fill every `# YOUR CODE HERE`, then run the check cell below it."
    )
    note.id = NOTE_ID
    nb.cells.insert(0, note)
    nb.metadata["course"] = {"generated_from": f"solutions/{solution_path.name}"}
    nb.metadata["course"]["fingerprint"] = fingerprint(nb)
    nbformat.validate(nb)
    return nb


def render(nb: NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def exercise_path_for(solution_path: Path, exercises: Path = EXERCISES) -> Path:
    return exercises / solution_path.name


def was_edited(path: Path) -> bool:
    """True when the notebook at ``path`` no longer matches the fingerprint it was generated with."""
    nb = nbformat.read(path, as_version=4)
    recorded = nb.metadata.get("course", {}).get("fingerprint")
    return recorded is None or recorded != fingerprint(nb)


def generate_all(solutions: Path = SOLUTIONS, exercises: Path = EXERCISES, force: bool = False) -> list[Path]:
    """Write every exercise; refuse (LabError) to overwrite one that was edited, unless ``force``."""
    written = []
    exercises.mkdir(parents=True, exist_ok=True)
    for solution_path in sorted(solutions.glob("*_lab.ipynb")):
        target = exercise_path_for(solution_path, exercises)
        text = render(generate(solution_path))
        if target.exists():
            if target.read_text() == text:
                continue
            if was_edited(target) and not force:
                raise LabError(
                    f"{target} was edited after it was generated; not overwriting it. Move your work to "
                    "work/ (make work), or regenerate with --force (make exercises FORCE=1) to discard the edits."
                )
        target.write_text(text)
        written.append(target)
    return written


def out_of_sync(solutions: Path = SOLUTIONS, exercises: Path = EXERCISES) -> list[str]:
    """Problems that keep exercises/ from being exactly what generation gives (empty when in sync)."""
    problems = []
    expected = {p.name for p in solutions.glob("*_lab.ipynb")}
    for solution_path in sorted(solutions.glob("*_lab.ipynb")):
        target = exercise_path_for(solution_path, exercises)
        if not target.exists():
            problems.append(f"missing {target.relative_to(exercises.parent)}")
        elif target.read_text() != render(generate(solution_path)):
            problems.append(f"stale {target.relative_to(exercises.parent)}")
    for extra in sorted(exercises.glob("*.ipynb")):
        if extra.name not in expected:
            problems.append(f"orphan {extra.relative_to(exercises.parent)} (no solution)")
    return problems


def strip(paths: list[Path]) -> list[Path]:
    """Clean every notebook under ``paths``; return those that changed."""
    changed = []
    for path in paths:
        for nb_path in sorted([path] if path.suffix == ".ipynb" else path.rglob("*.ipynb")):
            if ".ipynb_checkpoints" in nb_path.parts:
                continue
            before = nb_path.read_text()
            after = render(clean(nbformat.read(nb_path, as_version=4)))
            if after != before:
                nb_path.write_text(after)
                changed.append(nb_path)
    return changed


def copy_to_work(exercises: Path = EXERCISES, work: Path = WORK, force: bool = False) -> list[Path]:
    """Copy each exercise to ``work/`` unless a copy is already there (kept unless ``force``)."""
    work.mkdir(parents=True, exist_ok=True)
    copied = []
    for source in sorted(exercises.glob("*.ipynb")):
        target = work / source.name
        if target.exists() and not force:
            continue
        shutil.copyfile(source, target)
        copied.append(target)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.labs", description="Lab machinery of the course.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write exercises/ from solutions/")
    gen.add_argument("--force", action="store_true", help="overwrite exercises even if they were edited")
    sub.add_parser("check", help="exit 1 when exercises/ is out of sync with solutions/")
    st = sub.add_parser("strip", help="remove outputs from notebooks")
    st.add_argument("paths", nargs="*", type=Path, help="files or folders (default: notebooks, solutions, exercises)")
    cp = sub.add_parser("copy", help="copy exercises/ to work/ (git-ignored) without overwriting your copies")
    cp.add_argument("--force", action="store_true", help="overwrite copies already in work/")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            written = generate_all(force=args.force)
            print(f"{len(written)} exercise notebook(s) written" + "".join(f"\n  {p.relative_to(ROOT)}" for p in written))
        elif args.command == "check":
            problems = out_of_sync()
            if problems:
                print("exercises/ is out of sync; run `make exercises`:\n  " + "\n  ".join(problems))
                return 1
            print("exercises/ is in sync with solutions/")
        elif args.command == "strip":
            paths = args.paths or [ROOT / d for d in NOTEBOOK_DIRS]
            changed = strip([p for p in paths if p.exists()])
            print(f"{len(changed)} notebook(s) cleaned" + "".join(f"\n  {p}" for p in changed))
        elif args.command == "copy":
            copied = copy_to_work(force=args.force)
            print(
                f"{len(copied)} notebook(s) copied to {WORK.relative_to(ROOT)}/ (existing copies kept)"
                + "".join(f"\n  {p.name}" for p in copied)
            )
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
