"""The training commands fail with one line, not a traceback, where torch is not installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

# None in sys.modules makes `import torch` raise ModuleNotFoundError, as on a device install
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from elr_export import entry; "


@pytest.mark.parametrize(("function", "program"), [
    ("train", "elr-train"), ("evaluate", "elr-eval"), ("export", "elr-export")])
def test_missing_torch_is_one_line_error(function: str, program: str):
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH + f"sys.exit(entry.{function}())"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"{program}: error: {program} needs torch")
    assert "pip install '.[export]'" in result.stderr


def test_entry_runs_the_command():
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from elr_export import entry; sys.argv = "
         "['elr-eval', '--help']; sys.exit(entry.evaluate())"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "usage: elr-eval" in result.stdout
