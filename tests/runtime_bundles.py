"""A tiny model, trained briefly on Shakespeare and exported with elr-export, for the runtime
tests.

The export takes most of a minute on two cores, so it runs once per test session: every
runtime test module gets the same directory from `shared_bundle`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elr_export.checkpoint import load_checkpoint, save_checkpoint
from elr_export.config import ModelConfig
from elr_export.export_cli import ExportOptions, run_export
from elr_export.model import ELRModel
from elr_export.reference import sequence_tensors
from elr_runtime.graph_io import MANIFEST_NAME
from elr_runtime.patcher import Patcher, TableBuilder, calibrate_threshold
from elr_runtime.patching import PatchRule

# Windows far shorter than the test prompts exercise cache trimming and the window masks.
# Entropy patching makes the compiled patcher decide the boundaries.
TINY_CONFIG = ModelConfig(d_local=32, n_local_heads=2, d_global=64, n_global_heads=2,
                          n_global_layers=2, local_window=16, global_window=8,
                          ngram_buckets=97, patching="entropy")
N_LATENT_STEPS = 2
TRAIN_BYTES = 60_000
TRAIN_STEPS = 150  # enough for peaked, prompt-dependent greedy output

_built: dict[str, Path] = {}


@dataclass(frozen=True)
class TinyRun:
    checkpoint: Path
    bundle: Path
    text: bytes  # the training text, for prompts


def shared_bundle(tmp_path_factory: pytest.TempPathFactory, text_dir: Path) -> TinyRun:
    """Return the session's tiny checkpoint and bundle, building them on first use."""
    text = (text_dir / "tinyshakespeare.txt").read_bytes()[:TRAIN_BYTES]
    if "bundle" not in _built:
        root = tmp_path_factory.mktemp("runtime_bundle")
        eval_text = root / "eval.txt"
        eval_text.write_bytes((text_dir / "tinyshakespeare.txt").read_bytes()[-2048:])
        with torch_threads(1):
            checkpoint = _train_checkpoint(root / "checkpoint", text)
            options = ExportOptions(checkpoint=checkpoint, out=root / "bundle",
                                    n_latent_steps=N_LATENT_STEPS, precision="both",
                                    eval_text=eval_text, eval_bytes=1024, keep_failed_int8=True)
            run_export(options)
        _built.update(checkpoint=checkpoint, bundle=root / "bundle")
    return TinyRun(_built["checkpoint"], _built["bundle"], text)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch on `count` threads: the tiny models only lose time to thread hand-offs on a
    shared two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_checkpoint(path: Path, text: bytes) -> Path:
    """Train the tiny model for a few Adam steps, so that its predictions are peaked.

    An untrained model's logits are nearly flat, and greedy comparisons between two
    implementations would then hinge on near-ties.
    """
    builder = TableBuilder(context_length=3)
    builder.add_document(text)
    table = builder.finalize()
    threshold = calibrate_threshold(table, text, target_mean_patch_length=4.0,
                                    max_patch_length=12)
    patcher = Patcher(table, threshold=threshold, max_patch_length=12)
    rule = PatchRule("entropy", patcher)

    torch.manual_seed(0)
    model = ELRModel(TINY_CONFIG)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(TRAIN_STEPS):
        starts = rng.integers(0, len(text) - 64, 8)
        rows = [sequence_tensors(text[s:s + 64], rule) for s in starts]
        byte_ids = torch.cat([r[0] for r in rows])  # (8, 65), BOS first
        patch_ids = torch.cat([r[1] for r in rows])  # (8, 66)
        logits = model(byte_ids, patch_ids)  # (8, 65, vocab_size)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), byte_ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_checkpoint(path, model.eval(), table, patcher.settings(),
                    {"n_latent_steps": N_LATENT_STEPS})
    return path


def load_reference(run: TinyRun) -> tuple[ELRModel, PatchRule]:
    """Return the PyTorch model and patch rule of the checkpoint behind the bundle."""
    checkpoint = load_checkpoint(run.checkpoint)
    return checkpoint.model.eval(), checkpoint.patch_rule()


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST_NAME).read_text())


def write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
