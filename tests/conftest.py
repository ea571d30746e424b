"""Shared fixtures: where the local MovieLens copies are, and a project-root anchor."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_data_root() -> Path:
    """The folder holding ml-100k/ and ml-1m-half/ (RECSYS_SHARED_DATA, default ../shared/data)."""
    return Path(os.environ.get("RECSYS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not (root / "ml-100k").is_dir() or not (root / "ml-1m-half").is_dir():
        pytest.skip(f"local MovieLens copies not found at {root} (set RECSYS_SHARED_DATA)")
    return root
