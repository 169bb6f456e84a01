"""Run the README's shell commands for real, in the order a user would.

Placeholders in the README (BUNDLE_DIR, notes/*.txt, ...) are given real files here, and the
slow commands get extra flags that shorten them (fewer steps, runs and bytes) without
changing what they exercise. `make demo` covers the demo itself; `pip install .`, `make` and
the root-only `make test-arm64` are not run here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import README, shell_commands

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Arguments appended to a command, chosen by its program name, to keep the test short.
SHORTENERS = {
    "elr-train": ["--max-steps", "2", "--seq-len", "64", "--batch-size", "4",
                  "--eval-windows", "4"],
    "elr-profile": ["--runs", "1", "--warmup", "0", "--max-bytes", "8"],
    "elr-run": ["--max-bytes", "16"],
}


def runnable(line: str) -> bool:
    first = line.split()[0]
    return first.startswith("elr-")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, text_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("readme")
    # the README reads the data from ../shared beside the working directory
    (root / "shared").symlink_to(text_dir.parents[1])
    work = root / "work"
    work.mkdir()
    (work / "models").symlink_to(REPO_ROOT / "models")
    shakespeare = (text_dir / "tinyshakespeare.txt").read_bytes()
    (work / "notes").mkdir()
    (work / "notes" / "a.txt").write_bytes(shakespeare[:20_000])
    (work / "notes" / "b.txt").write_bytes(shakespeare[20_000:40_000])
    (work / "held_out.txt").write_bytes(shakespeare[-3_000:])
    (work / "prompt.txt").write_bytes(b"JULIET:\nO Romeo, Romeo!")
    return work


def test_readme_commands_run(workdir: Path):
    commands = [line for line in shell_commands(README) if runnable(line)]
    # the export makes the bundle the other commands use, so it runs first
    commands.sort(key=lambda line: not line.startswith("elr-export"))
    assert commands[0].startswith("elr-export")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "SKBUILD_EDITABLE_VERBOSE": "0"}
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    for line in commands:
        command = (line.replace("BUNDLE_DIR", "bundles/default")
                   .replace("runs/tiny/bundle", "bundles/default")
                   .replace("new/bundle", "bundles/default")
                   .replace("old/bundle", "bundles/default"))
        if not has_matplotlib:
            command = command.replace(" --plot profile.png", "")
        extra = SHORTENERS.get(command.split()[0], [])
        redirect = ""
        if " < " in command:
            command, redirect = command.split(" < ")
            redirect = " < " + redirect
        full = f"{command} {' '.join(extra)}{redirect}"
        result = subprocess.run(["bash", "-c", full], cwd=workdir, env=env,
                                capture_output=True, timeout=900)
        assert result.returncode == 0, (
            f"README command failed: {full}\n{result.stderr.decode(errors='replace')[-2000:]}")
    assert shutil.which("elr-run", path=str(VENV_BIN))
    assert (workdir / "runs" / "mine" / "config.json").is_file()
    assert (workdir / "profile.json").is_file()


def test_readme_python_api_runs(workdir: Path):
    blocks = [block for block in _python_blocks() if "elr_runtime import Generator" in block]
    assert blocks, "the README must show the runtime's Python API"
    bundle = workdir / "bundles" / "default"
    if not bundle.is_dir():
        pytest.skip("needs the bundle that test_readme_commands_run exports")
    code = blocks[0].replace("max_bytes=200", "max_bytes=20")
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True,
                            timeout=300, env={**os.environ, "SKBUILD_EDITABLE_VERBOSE": "0"})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert len(result.stdout) > 0


def _python_blocks() -> list[str]:
    import re

    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
