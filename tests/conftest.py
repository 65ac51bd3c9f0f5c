"""Shared fixtures. Real video fixtures come from ../shared/data/real (or $DVDM_REAL_DATA) and are never
copied into the repository; tests that need them skip with the reason when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    env = os.environ.get("DVDM_REAL_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "real"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real video fixtures; skips the test when it is absent."""
    path = real_data_dir()
    if path is None:
        pytest.skip("real video fixtures not found: set DVDM_REAL_DATA or place them at ../shared/data/real")
    return path
