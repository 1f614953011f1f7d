"""Shared test setup: a headless matplotlib backend and a repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the course's cache folder at a fresh temporary folder."""
    monkeypatch.setenv("COMPRESSION_COURSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
