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
