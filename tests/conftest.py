"""Shared fixtures: paths to the real data sets beside the checkout and small model configs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT.parent / "shared" / "data"
TEXT_DIR = DATA_DIR / "text"


@pytest.fixture(scope="session")
def text_dir() -> Path:
    if not TEXT_DIR.is_dir():
        pytest.fail(f"real text data not found at {TEXT_DIR}: check out ../shared beside the repo")
    return TEXT_DIR
