"""Execute every lecture and lab top to bottom and print each one's wall time as a table.

Run on a quiet machine (``make time-notebooks``); the README's run-time table and each notebook's
header come from this. ``--cold`` points the cache at a fresh folder first, so notebooks that
train a baseline or a teacher on first use pay for it, as a learner's first run does; each notebook
gets a cache of its own, so each time is that notebook's first run alone.

    python scripts/time_notebooks.py [--cold] [--only 00 07] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def run(path: Path, save: Path | None = None, timeout: int = 600) -> float:
    """Seconds to execute ``path`` in a fresh python3 kernel (raises if a cell fails); ``save``: a folder
    to write the executed notebook to."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save / path.name)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="run each notebook from an empty cache folder")
    parser.add_argument("--only", nargs="+", default=None, help="chapter numbers to run, e.g. 00 07")
    parser.add_argument("--threads", type=int, default=None, help="set OMP_NUM_THREADS for the kernels")
    parser.add_argument("--save", type=Path, default=None, help="also write the executed notebooks to this folder")
    args = parser.parse_args()
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    paths = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
    if args.only:
        paths = [p for p in paths if p.name[:2] in args.only]
    print(f"| notebook | seconds ({'cold' if args.cold else 'warm'} cache, threads: {args.threads or 'default'}) |")
    print("|---|---|")
    for path in paths:
        if args.cold:
            os.environ["COMPRESSION_COURSE_CACHE"] = tempfile.mkdtemp(prefix="course-cache-")
        print(f"| {path.relative_to(ROOT)} | {run(path, args.save):.1f} |", flush=True)


if __name__ == "__main__":
    main()
