"""The demo path of the README on the committed default model: export to int8, then stream."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "models" / "default"
SHAKESPEARE_VAL_BYTES = 111_539  # the last 10 % of tinyshakespeare.txt, never trained on


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory, text_dir: Path) -> Path:
    work = tmp_path_factory.mktemp("demo")
    heldout = work / "heldout.txt"
    heldout.write_bytes((text_dir / "tinyshakespeare.txt").read_bytes()[-SHAKESPEARE_VAL_BYTES:])
    bundle = work / "bundle"
    result = subprocess.run(
        [sys.executable, "-m", "elr_export.export_cli", str(DEFAULT_MODEL), "--out", str(bundle),
         "--precision", "int8", "--latent-steps", "4", "--exporter", "torchscript",
         "--eval-text", str(heldout)],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return bundle


def test_default_model_is_small():
    size = sum(p.stat().st_size for p in DEFAULT_MODEL.iterdir())
    assert size <= 10_500_000


def test_demo_streams_text_with_stats(demo_bundle: Path):
    env = {**os.environ, "SKBUILD_EDITABLE_VERBOSE": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "elr_runtime.cli", str(demo_bundle), "--max-bytes", "200",
         "--stats"],
        input=b"KING HENRY:\nWhat news from France? Speak, and be brief.\n\n",
        capture_output=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    text = result.stdout.decode("utf-8")  # raises if the output is not valid UTF-8
    assert len(text.strip()) > 0
    stats = result.stderr.decode()
    assert "bytes/s" in stats
    assert "first byte" in stats
