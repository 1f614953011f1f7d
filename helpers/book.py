"""The course as a static web site: ``make book`` -> ``_build/html/index.html``.

Every lecture (``notebooks/*.ipynb``) and every lab (``solutions/*_lab.ipynb``, its solution cells
collapsed behind a "show code" toggle) becomes a page with its executed outputs and figures. Pages are
found by globbing, so a new chapter appears without editing this file. Sphinx + MyST-NB + the book
theme build the site from local files only (no template or asset is fetched at build time).

The outputs come from one execution of each notebook, never from committed outputs (the committed
notebooks have none). That execution is either the build's own (``nbclient``, a fresh ``python3``
kernel per notebook with the inline figure backend), or the one nbval made during the same
``make test`` (the repository's ``conftest.py`` keeps what each cell printed and drew, see
:func:`save_executed`), reused when neither the notebook nor ``helpers/`` changed since. Usage::

    python -m helpers.book [--fresh]      # build _build/html (--fresh: execute every notebook again)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
from nbformat import NotebookNode

from . import labs

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
EXECUTED = BUILD / "executed"  # one executed copy of each notebook, stamped with what it was executed from
SOURCE = BUILD / "book-src"  # the Sphinx project the build writes (never edited by hand)
HTML = BUILD / "html"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "*An interactive explorer is shown here when you run this notebook in Jupyter (`make lab`).*"
TITLE = "Neural-network model compression, hands-on"


@dataclass(frozen=True)
class Chapter:
    """One chapter of the course: its number, its title and its lecture and lab notebooks (either may be missing)."""

    number: str
    title: str
    lecture: Path | None
    lab: Path | None


def notebook_title(path: Path) -> str:
    """The title of ``path``: its first markdown heading without the leading ``#`` (the file name if it has none)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#\s+(.+)$", cell.source, re.MULTILINE)
            if match:
                return match.group(1).strip()
    return path.stem


def chapters(root: Path = ROOT) -> list[Chapter]:
    """Every chapter under ``root``, in course order: ``notebooks/NN_*.ipynb`` and ``solutions/NN_*_lab.ipynb`` paired by NN."""
    lectures = {p.name[:2]: p for p in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    lab_paths = {p.name[:2]: p for p in sorted((root / "solutions").glob("[0-9][0-9]_*_lab.ipynb"))}
    found = []
    for number in sorted(set(lectures) | set(lab_paths)):
        lecture, lab = lectures.get(number), lab_paths.get(number)
        title = notebook_title(lecture) if lecture else notebook_title(lab)  # type: ignore[arg-type]
        found.append(Chapter(number, title, lecture, lab))
    return found


def book_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks the book renders (lectures and lab solutions), in course order."""
    return [p for c in chapters(root) for p in (c.lecture, c.lab) if p is not None]


def stamp(path: Path, root: Path = ROOT) -> str:
    """sha256 of the notebook ``path`` and of every ``helpers/*.py``: what an execution of it depends on."""
    digest = hashlib.sha256(path.read_bytes())
    for helper in sorted((root / "helpers").glob("*.py")):
        digest.update(helper.name.encode() + helper.read_bytes())
    return digest.hexdigest()


def executed_path(path: Path, root: Path = ROOT, executed: Path = EXECUTED) -> Path:
    """Where the executed copy of ``path`` (a notebook under ``root``) is kept."""
    return executed / path.resolve().relative_to(root.resolve())


def save_executed(path: Path, nb: NotebookNode, root: Path = ROOT, executed: Path = EXECUTED) -> Path:
    """Keep ``nb``, an executed copy of the notebook ``path``, stamped with :func:`stamp`; returns where."""
    nb = nbformat.from_dict(nb)
    nb.metadata["course_book"] = {"stamp": stamp(path, root), "executed": time.strftime("%Y-%m-%dT%H:%M:%S")}
    target = executed_path(path, root, executed)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(target)
    return target


def load_executed(path: Path, root: Path = ROOT, executed: Path = EXECUTED) -> NotebookNode | None:
    """The kept executed copy of ``path`` if it was executed from the current notebook and helpers, else None."""
    target = executed_path(path, root, executed)
    if not target.exists():
        return None
    nb = nbformat.read(target, as_version=4)
    if nb.metadata.get("course_book", {}).get("stamp") != stamp(path, root):
        return None
    return nb


@contextlib.contextmanager
def inline_figures() -> Iterator[None]:
    """Within the block, kernels started from this process draw figures inline (PNG outputs), as in Jupyter.

    ``make test`` sets ``MPLBACKEND=Agg`` so that nothing opens a window; a kernel that inherits it
    draws nothing, and the book would have no figures.
    """
    old = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = old


def execute(path: Path, timeout: int = 600) -> NotebookNode:
    """Execute the notebook ``path`` top to bottom in a fresh python3 kernel (cwd: its folder); raises if a cell fails."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    with inline_figures():
        client.execute()
    return nb


def executed_notebook(path: Path, fresh: bool = False, root: Path = ROOT, executed: Path = EXECUTED) -> tuple[NotebookNode, bool]:
    """(executed copy of ``path``, whether it was executed now): the kept one when current, else a new execution (kept)."""
    nb = None if fresh else load_executed(path, root, executed)
    if nb is not None:
        return nb, False
    nb = execute(path)
    save_executed(path, nb, root, executed)
    return nb, True


def count_images(nb: NotebookNode) -> int:
    """Number of image outputs (PNG, JPEG or SVG) in the executed notebook ``nb``."""
    kinds = ("image/png", "image/jpeg", "image/svg+xml")
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if any(k in o.get("data", {}) for k in kinds))


def for_the_page(nb: NotebookNode, is_lab: bool) -> NotebookNode:
    """A copy of the executed ``nb`` ready to render: widget outputs (which need a kernel) become a note, and in
    a lab every cell holding a solution is collapsed (``hide-input``: the learner opens it on purpose)."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = list(cell.metadata.get("tags", []))
        if is_lab and labs.has_solution(cell.source) and "hide-input" not in tags:
            tags.append("hide-input")
        if tags:
            cell.metadata["tags"] = tags
        outputs = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data:
                text = str(data.get("text/plain", ""))
                if "%|" in text:  # a tqdm progress bar: keep its final text
                    output["data"] = {"text/plain": text}
                else:
                    output["data"] = {"text/markdown": WIDGET_NOTE}
                output.get("metadata", {}).pop(WIDGET_MIME, None)
            outputs.append(output)
        cell["outputs"] = outputs
    nb.metadata.pop("widgets", None)  # no widget state: the page has no kernel to drive it
    return nb


CONF_PY = '''\
# Written by helpers/book.py on every build: edit that file, not this one.
project = {title!r}
author = "the course's authors"
copyright = "the course's authors; MNIST subset: Y. LeCun and C. Cortes, CC BY-SA 3.0"
extensions = ["myst_nb"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
nb_execution_mode = "off"  # executed once by helpers/book.py (or by nbval in `make test`), never here
nb_merge_streams = True
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath", "amsmath"]  # $...$ and $$...$$ as in Jupyter; MathJax typesets them in the browser
html_theme = "sphinx_book_theme"
html_title = {title!r}
html_theme_options = {{"show_toc_level": 2, "use_download_button": True, "home_page_in_toc": True}}
html_last_updated_fmt = None
'''


def index_markdown(found: Sequence[Chapter]) -> str:
    """The home page: what the course is, and one row per chapter linking its lecture and lab pages."""
    lines = [
        f"# {TITLE}",
        "",
        "A course that builds every major compression technique from scratch (first the math in numpy, then",
        "PyTorch on a real model) and measures what each one buys: accuracy, bytes on disk, MACs and CPU latency.",
        "These pages show each lecture and each lab as it ran when this site was built, with its outputs and",
        "figures; the solutions of the labs are collapsed (click to open). To run them yourself, clone the",
        "repository and follow its README (`make lab`); interactive explorers need a running notebook.",
        "",
        "| # | chapter | lecture | lab |",
        "|---|---|---|---|",
    ]
    toc = []
    for c in found:
        lecture = f"[lecture](notebooks/{c.lecture.stem}.ipynb)" if c.lecture else ""
        lab = f"[lab](solutions/{c.lab.stem}.ipynb)" if c.lab else ""
        title = re.sub(r"^\d+\s*·\s*", "", c.title).replace("|", "\\|")
        lines.append(f"| {c.number} | {title} | {lecture} | {lab} |")
        toc += ([f"notebooks/{c.lecture.stem}"] if c.lecture else []) + ([f"solutions/{c.lab.stem}"] if c.lab else [])
    lines += ["", "```{toctree}", ":hidden:", ":maxdepth: 1", ""] + toc + ["```", ""]
    return "\n".join(lines)


def write_sources(notebooks: dict[Path, NotebookNode], root: Path = ROOT, source: Path = SOURCE) -> Path:
    """Write the Sphinx project (conf.py, index.md and the rendered notebooks, in their repository folders) to ``source``."""
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    (source / "conf.py").write_text(CONF_PY.format(title=TITLE))
    (source / "index.md").write_text(index_markdown(chapters(root)))
    for path, nb in notebooks.items():
        target = source / path.resolve().relative_to(root.resolve())
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(for_the_page(nb, is_lab=path.parent.name == "solutions"), target)
    return source


def build(fresh: bool = False, root: Path = ROOT, build_dir: Path = BUILD, log=print) -> Path:
    """Build the site into ``build_dir/html``; returns its ``index.html``. Notebooks are executed when their kept
    executed copy is missing or stale (or always with ``fresh``); a failing notebook fails the build."""
    executed_dir, source, out = build_dir / "executed", build_dir / "book-src", build_dir / "html"
    notebooks = {}
    for path in book_notebooks(root):
        start = time.perf_counter()
        nb, ran = executed_notebook(path, fresh=fresh, root=root, executed=executed_dir)
        notebooks[path] = nb
        log(f"{path.relative_to(root)}: {'executed in %.0f s' % (time.perf_counter() - start) if ran else 'kept execution reused'}")
    write_sources(notebooks, root, source)
    if out.exists():
        shutil.rmtree(out)
    warnings = build_dir / "sphinx-warnings.txt"
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", "-d", str(build_dir / "doctrees"), "-w", str(warnings)]
    subprocess.run([*command, str(source), str(out)], check=True)
    text = warnings.read_text() if warnings.exists() else ""
    if text.strip():
        log(f"Sphinx warnings ({warnings}):\n{text}")
    return out / "index.html"


class _Links(HTMLParser):
    """Collects the link targets (href, src) and the ids of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])  # type: ignore[arg-type]
        if tag == "img":
            self.images += 1
        for name in ("href", "src"):
            if values.get(name) and tag in ("a", "img", "link", "script"):
                self.links.append(html.unescape(values[name]))  # type: ignore[arg-type]


def parse_page(page: Path) -> _Links:
    """The links, ids and number of ``<img>`` of the HTML file ``page``."""
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def broken_links(html_dir: Path) -> list[str]:
    """Every internal link of the site under ``html_dir`` whose target file (or ``#anchor`` in it) does not exist,
    as ``page -> link``; external links (http, mailto, data) are not followed, and the theme's templates under
    ``_static`` are not pages."""
    pages = {p.resolve(): parse_page(p) for p in html_dir.rglob("*.html") if "_static" not in p.relative_to(html_dir).parts}
    broken = []
    for page, parsed in pages.items():
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith("//"):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(html_dir.resolve())} -> {link}")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse_page(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(html_dir.resolve())} -> {link} (no such anchor)")
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="execute every notebook again, even if a current execution is kept")
    args = parser.parse_args(argv)
    index = build(fresh=args.fresh)
    broken = broken_links(index.parent)
    for link in broken:
        print(f"broken link: {link}", file=sys.stderr)
    print(f"book: {index}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
