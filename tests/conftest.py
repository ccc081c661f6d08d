"""Shared fixtures: where the read-only real data lives, and a scratch results folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``../shared`` beside the checkout (or ``$FAIRVLM_SHARED``)."""
    return Path(os.environ.get("FAIRVLM_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "data").is_dir():
        pytest.skip(f"real test data not found at {path}/data (set FAIRVLM_SHARED)")
    return path


@pytest.fixture()
def tmp_outputs(tmp_path, monkeypatch):
    """Send results and figures of the code under test into a temporary folder."""
    monkeypatch.setenv("FAIRVLM_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("FAIRVLM_FIGURES", str(tmp_path / "figures"))
    return tmp_path


#: The book's own outputs, which no test may write (``make test`` after ``make book`` must
#: leave the book that was built): the smoke run writes under ``_build/smoke`` instead.
BOOK_OUTPUTS = ("results", "figures", "book/executed")


def snapshot_book_outputs(root: Path = ROOT) -> dict[str, dict[str, tuple]]:
    """Per folder: each file's (size, mtime in ns, sha256), by path relative to the folder."""
    import hashlib

    snap = {}
    for folder in BOOK_OUTPUTS:
        files = {}
        base = root / folder
        for path in sorted(base.rglob("*")) if base.is_dir() else []:
            if path.is_file():
                st = path.stat()
                files[str(path.relative_to(base))] = (st.st_size, st.st_mtime_ns,
                                                      hashlib.sha256(path.read_bytes()).hexdigest())
        snap[folder] = files
    return snap


def pytest_sessionstart(session):
    session.config._fairvlm_book_snapshot = snapshot_book_outputs()


@pytest.fixture(scope="session")
def book_snapshot(request):
    """The book's outputs as they were when the session started, and a function that takes
    them again."""
    return request.config._fairvlm_book_snapshot, snapshot_book_outputs
