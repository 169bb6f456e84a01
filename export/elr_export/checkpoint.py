"""Checkpoints: a directory with safetensors weights, a JSON config and the frequency table.

Layout (no pickle anywhere):

    model.safetensors      model weights (float32, or float16/bfloat16 for a compact release)
    optimizer.safetensors  AdamW moments, only in training checkpoints (for --resume)
    config.json            format version, model config, patcher settings, training state
    frequency_table.elrt   the entropy patcher's table (entropy patching only)

A checkpoint is written into a temporary directory beside the target and renamed into place,
so an interrupted save never leaves a half-written checkpoint and never destroys the old one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from elr_export.atomic_dir import current_umask, make_staging_dir, replace_dir
from elr_export.config import ModelConfig
from elr_export.model import ELRModel
from elr_runtime.graph_io import TABLE_NAME
from elr_runtime.patcher import FrequencyTable
from elr_runtime.patching import PatchRule

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or from an incompatible format version."""


@dataclass
class Checkpoint:
    model: ELRModel
    table: FrequencyTable | None
    patcher_settings: dict[str, Any] | None
    training_state: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def patch_rule(self) -> PatchRule:
        return PatchRule.from_settings(self.config.to_dict(), self.table, self.patcher_settings)


def save_checkpoint(path: str | Path, model: ELRModel, table: FrequencyTable | None,
                    patcher_settings: dict[str, Any] | None,
                    training_state: dict[str, Any] | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    weights_dtype: torch.dtype = torch.float32) -> Path:
    """Write a checkpoint directory atomically, replacing any checkpoint already at `path`."""
    target = Path(path)
    if target.exists() and not (target / CONFIG_NAME).is_file():
        raise CheckpointError(f"{target} exists and is not a checkpoint directory: "
                              "choose another output path")
    staging = make_staging_dir(target, "")
    umask = current_umask()
    try:
        state = {name: tensor.detach().to(weights_dtype).contiguous()
                 for name, tensor in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_NAME))
        if optimizer is not None:
            save_file(_optimizer_tensors(model, optimizer), str(staging / OPTIMIZER_NAME))
        if table is not None:
            table.save(str(staging / TABLE_NAME))
        config = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "model": model.config.to_dict(),
            "patcher": patcher_settings,
            "training": training_state or {},
        }
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for file in staging.iterdir():
            # safetensors creates its files private (0o600); all files get the usual mode
            os.chmod(file, 0o666 & ~umask)
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _optimizer_tensors(model: ELRModel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    names = {id(p): name for name, p in model.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if not state:
                continue
            name = names[id(param)]
            for key in ("exp_avg", "exp_avg_sq"):
                tensors[f"{key}/{name}"] = state[key].detach().contiguous()
            tensors[f"step/{name}"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1)
    return tensors


def load_optimizer_state(path: str | Path, model: ELRModel,
                         optimizer: torch.optim.Optimizer) -> bool:
    """Restore AdamW moments saved with a checkpoint. Returns False when none were saved."""
    file = Path(path) / OPTIMIZER_NAME
    if not file.is_file():
        return False
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file} is corrupt ({err}): resume from another checkpoint") from err
    params = dict(model.named_parameters())
    for name, param in params.items():
        if f"exp_avg/{name}" not in tensors:
            raise CheckpointError(f"{file} has no optimizer state for {name!r}: "
                                  "it belongs to a different model")
        optimizer.state[param] = {
            "step": tensors[f"step/{name}"].reshape(()),
            "exp_avg": tensors[f"exp_avg/{name}"],
            "exp_avg_sq": tensors[f"exp_avg_sq/{name}"],
        }
    return True


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint directory, validating its format version, config and weights."""
    root = Path(path)
    config_file = root / CONFIG_NAME
    if not root.is_dir():
        raise CheckpointError(f"checkpoint {root} not found: pass a directory written by elr-train")
    if not config_file.is_file():
        raise CheckpointError(f"{root} has no {CONFIG_NAME}: pass a directory written by elr-train")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err}): the checkpoint is "
                              "corrupt") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} is not a checkpoint config: "
                              "the checkpoint is corrupt")
    version = config.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{root} has checkpoint format version {version!r}, this elr-lrt "
                              f"reads version {CHECKPOINT_FORMAT_VERSION}: retrain or use the "
                              "matching elr-lrt release")
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{config_file} has an invalid model config: {err}") from err

    model = ELRModel(model_config)
    weights_file = root / WEIGHTS_NAME
    try:
        state = load_file(str(weights_file))
    except FileNotFoundError as err:
        raise CheckpointError(f"{weights_file} is missing: the checkpoint is incomplete") from err
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_file} is corrupt ({err}): re-run elr-train or restore "
                              "the file") from err
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights_file} does not match its config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}): the checkpoint is corrupt")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{weights_file}: {name} has shape {tuple(tensor.shape)}, the "
                                  f"config needs {tuple(expected[name].shape)}")
    model.load_state_dict({name: t.float() for name, t in state.items()})

    table = None
    if model_config.patching == "entropy":
        table_file = root / TABLE_NAME
        if not table_file.is_file():
            raise CheckpointError(f"{table_file} is missing: an entropy-patched model needs its "
                                  "frequency table")
        try:
            table = FrequencyTable.load(str(table_file))
        except ValueError as err:
            raise CheckpointError(f"{table_file}: {err}") from err
    return Checkpoint(model, table, config.get("patcher"), config.get("training", {}), root)


def compact_checkpoint(source: str | Path, target: str | Path,
                       weights_dtype: torch.dtype = torch.float16) -> Path:
    """Write a release copy of a checkpoint: weights in `weights_dtype`, no optimizer state.

    float16 halves the size of float32 weights; loading converts them back to float32.
    """
    ckpt = load_checkpoint(source)
    state = dict(ckpt.training_state)
    state["weights_dtype"] = str(weights_dtype).removeprefix("torch.")
    return save_checkpoint(target, ckpt.model, ckpt.table, ckpt.patcher_settings,
                           training_state=state, weights_dtype=weights_dtype)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m elr_export.checkpoint",
        description="Write a compact release copy of a training checkpoint (no optimizer "
        "state, weights stored in a smaller float type).")
    parser.add_argument("source", help="checkpoint directory written by elr-train")
    parser.add_argument("target", help="directory for the compact copy (replaced if it is a "
                        "checkpoint)")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                        help="storage type of the weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    """python -m elr_export.checkpoint SOURCE TARGET [--dtype float16|bfloat16|float32]"""
    args = build_parser().parse_args(argv)
    try:
        out = compact_checkpoint(args.source, args.target, getattr(torch, args.dtype))
    except CheckpointError as err:
        print(f"elr_export.checkpoint: error: {err}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
