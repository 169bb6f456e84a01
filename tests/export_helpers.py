"""Tiny models, patch rules and a short training loop for the export tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from elr_export.config import ModelConfig
from elr_export.model import ELRModel
from elr_export.reference import sequence_tensors
from elr_runtime.patcher import FrequencyTable, Patcher, TableBuilder, calibrate_threshold
from elr_runtime.patching import PatchRule

# Windows shorter than the test texts, so that trimmed caches and the window mask are used.
# One global layer keeps the unrolled latent loop, the slowest graph to export, small.
TINY_CONFIG = dict(d_local=32, n_local_heads=2, d_global=64, n_global_heads=2,
                   n_global_layers=1, local_window=16, global_window=8, ngram_buckets=97)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on `n` threads inside the block.

    The tests share two cores with other work, and oversubscribed torch threads slow small
    models down many times.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_model(patching: str = "fixed", seed: int = 0) -> ELRModel:
    torch.manual_seed(seed)
    config = ModelConfig(**TINY_CONFIG, patching=patching, fixed_patch_length=3)
    return ELRModel(config).eval()


def entropy_patching(text: bytes) -> tuple[PatchRule, FrequencyTable, dict[str, Any]]:
    """Build a frequency table on `text` and a patcher with a mean patch length near 4."""
    builder = TableBuilder(context_length=3)
    builder.add_document(text)
    table = builder.finalize()
    threshold = calibrate_threshold(table, text, target_mean_patch_length=4.0,
                                    max_patch_length=12)
    patcher = Patcher(table, threshold=threshold, max_patch_length=12)
    return PatchRule("entropy", patcher), table, patcher.settings()


def train_briefly(model: ELRModel, rule: PatchRule, text: bytes, steps: int,
                  seq_len: int = 64, batch_size: int = 8, seed: int = 0) -> ELRModel:
    """Train on random windows of `text` for a few Adam steps, so predictions are peaked.

    An untrained model's logits are almost flat, which makes top-1 agreement between fp32
    and int8 a coin toss among near-ties and tests nothing.
    """
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = rng.integers(0, len(text) - seq_len, batch_size)
        rows = [sequence_tensors(text[s:s + seq_len], rule) for s in starts]
        byte_ids = torch.cat([r[0] for r in rows])  # (B, seq_len + 1), BOS first
        patch_ids = torch.cat([r[1] for r in rows])  # (B, seq_len + 2)
        logits = model(byte_ids, patch_ids)  # (B, seq_len + 1, vocab)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), byte_ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
