"""PyTorch reference decoding: the yardstick that the ONNX graphs and the runtime are checked
against.

`step_logits` runs a sequence through the four step functions with KV caches, in chunks, the
way the runtime does. `generate` produces text by recomputing the full-sequence forward for
every new byte, which shares no cache logic with the runtime, so agreement between the two is
a real check.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from elr_export.model import ELRModel
from elr_runtime.graph_io import BOS_ID, EOS_ID, PAD_ID
from elr_runtime.patching import PatchRule


def patch_ids_from_mask(start_mask: np.ndarray) -> np.ndarray:
    """Convert a start mask over the bytes after BOS into patch ids with BOS as patch 0.

    start_mask: (n,) bool, True where a byte starts a patch; it must be True at index 0.
    Returns (n + 1,) int64: 0 for BOS, then the patch index of every byte.
    """
    ids = np.zeros(len(start_mask) + 1, dtype=np.int64)
    ids[1:] = np.cumsum(start_mask, dtype=np.int64)
    return ids


def sequence_tensors(data: bytes, rule: PatchRule) -> tuple[Tensor, Tensor]:
    """Build (byte_ids (1, n + 1), patch_ids (1, n + 2)) for BOS followed by `data`.

    The extra patch id belongs to the position after the last byte; causality makes its
    boundary independent of the byte that will fill it, so a zero byte is used in its place.
    """
    mask = rule.patch_start_mask(bytes(data) + b"\x00")
    byte_ids = torch.tensor([BOS_ID, *data], dtype=torch.long)[None]
    patch_ids = torch.from_numpy(patch_ids_from_mask(mask))[None]
    return byte_ids, patch_ids


@torch.no_grad()
def step_logits(model: ELRModel, byte_ids: Sequence[int], next_starts_patch: Sequence[bool],
                chunk_lengths: Sequence[int]) -> Tensor:
    """Run `byte_ids` (starting with BOS) through the step functions, chunk by chunk.

    next_starts_patch[t] is True when position t + 1 starts a patch (it must be True at t = 0,
    because BOS is a patch of its own). chunk_lengths must sum to len(byte_ids).
    Returns logits (len(byte_ids), vocab_size) for batch 1.
    """
    c = model.config
    ids = torch.tensor(list(byte_ids), dtype=torch.long)[None]  # (1, T)
    if sum(chunk_lengths) != ids.shape[1]:
        raise ValueError("chunk_lengths must add up to the sequence length")
    enc_cache = model.encoder.empty_cache(1)
    glob_cache = model.global_model.empty_cache(1)
    dec_cache = model.decoder.empty_cache(1)
    padded = torch.cat((torch.full((1, c.ngram_history), PAD_ID, dtype=torch.long), ids), dim=1)

    pending: list[Tensor] = []  # encoder states of the unfinished patch, each (1, 1, d_local)
    context: Tensor | None = None
    n_patches = 0
    logits = []
    start = 0
    for length in chunk_lengths:
        stop = start + length
        positions = torch.arange(start, stop)[None]

        # encoder over the chunk
        hidden, new_keys, new_values = model.encoder_step(
            ids[:, start:stop], padded[:, start:start + c.ngram_history], positions, enc_cache)
        enc_cache = enc_cache.append(positions, new_keys, new_values)

        # a global step for every patch that finishes inside the chunk
        contexts = []
        for offset, t in enumerate(range(start, stop)):
            pending.append(hidden[:, offset:offset + 1])
            if next_starts_patch[t]:
                patch_position = torch.tensor([[n_patches]])
                context, new_keys, new_values = model.global_step(
                    torch.cat(pending, dim=1), patch_position, glob_cache)
                glob_cache = glob_cache.append(patch_position, new_keys, new_values)
                n_patches += 1
                pending = []
            assert context is not None, "position 0 (BOS) must end a patch"
            contexts.append(context)

        # decoder over the chunk
        chunk_logits, new_keys, new_values = model.decoder_step(
            hidden, torch.cat(contexts, dim=1), positions, dec_cache)
        dec_cache = dec_cache.append(positions, new_keys, new_values)
        logits.append(chunk_logits[0])
        start = stop
    return torch.cat(logits)


def sample_next(logits: Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> int:
    """Pick the next byte id from (vocab_size,) logits; temperature 0 means greedy."""
    if temperature <= 0.0:
        return int(torch.argmax(logits).item())
    scores = logits.double() / temperature
    if top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        filtered = torch.zeros_like(probs)
        filtered[order[keep]] = sorted_probs[keep]
        probs = filtered / filtered.sum()
    return int(torch.multinomial(probs, 1, generator=generator).item())


@torch.no_grad()
def generate(model: ELRModel, rule: PatchRule, prompt: bytes, max_new_bytes: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0) -> bytes:
    """Generate up to `max_new_bytes` bytes after `prompt`, stopping early at EOS.

    Greedy when temperature is 0; otherwise samples with a torch generator seeded by `seed`.
    Special ids other than EOS are never emitted: they are masked out before sampling.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    data = bytearray(prompt)
    for _ in range(max_new_bytes):
        byte_ids, patch_ids = sequence_tensors(bytes(data), rule)
        logits = model(byte_ids, patch_ids)[0, -1].float()
        eos_logit = logits[EOS_ID].clone()
        logits[256:] = float("-inf")
        logits[EOS_ID] = eos_logit
        next_id = sample_next(logits, temperature, top_k, top_p, generator)
        if next_id == EOS_ID:
            break
        data.append(next_id)
    return bytes(data[len(prompt):])
