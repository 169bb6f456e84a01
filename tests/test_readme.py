"""The README's commands stay valid: every elr-* command line parses with the current flags.

`make demo` runs the main path (export, then elr-run) for real; this test catches a flag that
was renamed or removed in any other command the README shows.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from elr_export.checkpoint import build_parser as checkpoint_parser
from elr_export.evaluate import build_parser as eval_parser
from elr_export.export_cli import build_parser as export_parser
from elr_export.train_cli import build_parser as train_parser
from elr_profile.cli import build_parser as profile_parser
from elr_runtime.cli import build_parser as run_parser

README = Path(__file__).resolve().parents[1] / "README.md"
MODEL_CARD = Path(__file__).resolve().parents[1] / "models" / "default" / "MODEL_CARD.md"


def shell_commands(path: Path) -> list[str]:
    """Return the command lines of the ```sh blocks in a Markdown file, continuations joined."""
    blocks = re.findall(r"```sh\n(.*?)```", path.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def parse_only(argv: list[str]) -> None:
    """Parse a command line with the command's own parser, without running it."""
    name, args = Path(argv[0]).name, argv[1:]  # "~/elr/bin/elr-run" is elr-run in a venv
    if name == "torchrun":
        module_index = args.index("-m")
        name, args = args[module_index + 1], args[module_index + 2:]
    if name in ("elr-train", "elr_export.train_cli"):
        train_parser().parse_args(args)
    elif name == "elr-export":
        export_parser().parse_args(args)
    elif name == "elr-run":
        run_parser().parse_args(args)
    elif name == "elr-profile":
        profile_parser().parse_args(args)
    elif name == "elr-eval":
        eval_parser().parse_args(args)
    else:
        raise AssertionError(f"README command {name!r} has no parse check: add one here")


def elr_commands(path: Path) -> list[list[str]]:
    out = []
    for line in shell_commands(path):
        argv = shlex.split(line.split("<")[0])
        not_elr = argv[0] in ("make", "pip", "tail") or argv[:3] in (
            ["python", "-m", "elr_export.checkpoint"], ["python3", "-m", "venv"])
        if not_elr:
            continue
        out.append(argv)
    return out


@pytest.mark.parametrize("argv", elr_commands(README), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv: list[str]):
    parse_only(argv)


@pytest.mark.parametrize("argv", elr_commands(MODEL_CARD), ids=lambda a: " ".join(a)[:60])
def test_model_card_command_parses(argv: list[str]):
    parse_only(argv)


def test_checkpoint_compact_command_in_model_card():
    lines = [line for line in shell_commands(MODEL_CARD) if "elr_export.checkpoint" in line]
    assert lines, "the model card must show how the release copy was made"
    argv = shlex.split(lines[0])[3:]
    checkpoint_parser().parse_args(argv)
