"""Rewrite the Colab block of every notebook's setup cell (notebooks/ and solutions/) to the current one.

    python scripts/update_setup_cells.py [--repo-url URL] [--check]
    python -m helpers.labs generate --force      # then: the exercises get the block from their solutions

On Colab the block clones the course and installs its helpers, with no address for the learner to
edit: the address is written into the notebooks by this script. It is ``--repo-url`` when given,
else the https address of this checkout's ``origin`` remote when that is a public git host (ssh
addresses are converted), else the address the notebooks already carry. A learner can still point
a notebook at another copy by setting ``COURSE_REPO_URL`` before the setup cell runs. While no
address is known the notebooks carry a placeholder, and on Colab the block stops with a message
that says what to set (it never tries to clone the placeholder).

``--check`` changes nothing and exits 1 when a notebook's block is not the current one
(tests/test_colab.py runs it).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("notebooks", "solutions")
PLACEHOLDER = "https://github.com/YOUR-ACCOUNT/model-compression-course"
URL_LINE = re.compile(r'^\s*REPO_URL = os\.environ\.get\("COURSE_REPO_URL", "(?P<url>[^"]*)"\)', re.MULTILINE)

BLOCK = '''\
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:  # Colab starts without the course: fetch it and install its helpers (README, "Colab")
    import os
    import subprocess

    REPO_URL = os.environ.get("COURSE_REPO_URL", "{url}")  # set by scripts/update_setup_cells.py
    COURSE_DIR = "/content/course"
    if "YOUR-ACCOUNT" in REPO_URL:
        raise RuntimeError("This notebook does not know where the course lives. Run this first, with the address of "
                           "your copy: import os; os.environ['COURSE_REPO_URL'] = 'https://github.com/<you>/<course>'")
    if not os.path.isdir(os.path.join(COURSE_DIR, "helpers")):
        cloned = subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, COURSE_DIR], capture_output=True, text=True)
        if cloned.returncode != 0:
            raise RuntimeError(f"could not clone the course from {{REPO_URL}} (set COURSE_REPO_URL to your copy): "
                               f"{{cloned.stderr.strip()}}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", COURSE_DIR], check=True)
    sys.path.insert(0, COURSE_DIR)'''


def render_block(url: str) -> str:
    """The Colab block that fetches the course from ``url``."""
    if not url or '"' in url or "\\" in url or "{" in url:
        raise ValueError(f"repo url must be a non-empty address without quotes, backslashes or braces, got {url!r}")
    return BLOCK.format(url=url)


def public_url(remote: str) -> str | None:
    """The https address of a git remote on a public host (``git@host:owner/repo.git`` or ``https://...``), else None."""
    remote = remote.strip()
    ssh = re.fullmatch(r"(?:ssh://)?git@([\w.-]+)[:/]([\w.-]+/[\w.-]+?)(?:\.git)?/?", remote)
    if ssh:
        return f"https://{ssh.group(1)}/{ssh.group(2)}"
    https = re.fullmatch(r"https://(?:[^@/]+@)?([\w.-]+)/([\w.-]+/[\w.-]+?)(?:\.git)?/?", remote)
    if https:
        return f"https://{https.group(1)}/{https.group(2)}"
    return None


def origin_url(root: Path = ROOT) -> str | None:
    """The public https address of ``root``'s ``origin`` remote, if it has one."""
    try:
        done = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return public_url(done.stdout) if done.returncode == 0 else None


def split_block(source: str) -> tuple[str, str] | None:
    """(Colab block, rest) of a setup cell's ``source``, or None when it has no Colab block: the block runs from the top
    to the end of the ``if IN_COLAB:`` suite."""
    lines = source.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("if IN_COLAB:")]
    if not starts or not any(line.startswith("IN_COLAB =") for line in lines[: starts[0]]):
        return None
    end = starts[0] + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or (not lines[end].strip() and end + 1 < len(lines)
                                                                          and lines[end + 1].startswith((" ", "\t")))):
        end += 1
    return "\n".join(lines[:end]), "\n".join(lines[end:])


def notebooks(root: Path = ROOT) -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (root / folder).glob("*.ipynb"))


def current_url(paths: list[Path]) -> str | None:
    """The address the notebooks' blocks carry now (the first one found), if any."""
    for path in paths:
        for cell in nbformat.read(path, as_version=4).cells:
            match = URL_LINE.search(cell.source) if cell.cell_type == "code" else None
            if match:
                return match.group("url")
    return None


def setup_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    return next((c for c in nb.cells if c.cell_type == "code" and split_block(c.source)), None)


def outdated(paths: list[Path], url: str | None = None) -> list[str]:
    """The notebooks among ``paths`` whose Colab block is missing or differs from the current one (for ``url``, or
    for the address the first of them carries)."""
    url = url or current_url(paths) or PLACEHOLDER
    wrong = []
    for path in paths:
        cell = setup_cell(nbformat.read(path, as_version=4))
        if cell is None:
            wrong.append(f"{path}: no Colab block (`IN_COLAB = ...` and `if IN_COLAB:` at the top of the setup cell)")
        elif split_block(cell.source)[0] != render_block(url):  # type: ignore[index]
            wrong.append(f"{path}: the Colab block is not the current one")
    return wrong


def update(paths: list[Path], url: str) -> list[Path]:
    """Rewrite the Colab block of each of ``paths`` for ``url``; returns the notebooks that changed."""
    from helpers import labs

    changed = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        cell = setup_cell(nb)
        if cell is None:
            raise ValueError(f"{path}: no Colab block to update (the setup cell must start like notebooks/00's)")
        block, rest = split_block(cell.source)  # type: ignore[misc]
        new = render_block(url) + "\n" + rest
        if new != cell.source:
            cell.source = new
            path.write_text(labs.render(labs.clean(nb)))
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-url", default=None, help="the https address the notebooks clone on Colab")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is not the current one")
    args = parser.parse_args(argv)
    paths = notebooks()
    if args.check:
        wrong = outdated(paths, args.repo_url)
        print("\n".join(wrong) or f"all {len(paths)} Colab blocks are current")
        return 1 if wrong else 0
    url = args.repo_url or origin_url() or current_url(paths) or PLACEHOLDER
    changed = update(paths, url)
    print(f"Colab block for {url}: {len(changed)} of {len(paths)} notebooks changed")
    if changed:
        print("now regenerate the exercises: python -m helpers.labs generate --force")
    return 0


if __name__ == "__main__":
    sys.exit(main())
