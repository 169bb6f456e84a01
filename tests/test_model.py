"""The PyTorch model: step-by-step decoding with KV caches equals the full forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elr_export.config import ModelConfig
from elr_export.model import (
    _HASH_BASES,
    Cache,
    ELRModel,
    estimate_flops_per_byte,
    ngram_hash_ids,
)
from elr_export.reference import patch_ids_from_mask, step_logits
from elr_runtime.graph_io import BOS_ID, EMPTY_POSITION

# Step decoding reorders no arithmetic that matters, so fp32 results agree to rounding.
STEP_TOLERANCE = 1e-5


def tiny_config(**overrides) -> ModelConfig:
    # windows far shorter than the test sequence, so that the sliding window is exercised
    values = dict(d_local=32, n_local_heads=2, d_global=64, n_global_heads=2, n_global_layers=2,
                  local_window=8, global_window=4, ngram_buckets=97, patching="fixed")
    values.update(overrides)
    return ModelConfig(**values)


def random_sequence(length: int, seed: int, start_probability: float = 0.3):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, length - 1)
    mask = rng.random(length) < start_probability
    mask[0] = True
    patch_ids = torch.from_numpy(patch_ids_from_mask(mask))[None]  # (1, length + 1)
    byte_ids = torch.tensor([BOS_ID, *data.tolist()])[None]  # (1, length)
    next_starts = [bool(patch_ids[0, t + 1] != patch_ids[0, t]) for t in range(length)]
    return byte_ids, patch_ids, next_starts


@pytest.mark.parametrize("chunks", [
    [40],                # one prefill: cache length 0
    [1] * 40,            # one byte at a time: cache lengths 0, 1, ... 39
    [1, 1, 38],          # prefill after a cache of length 2
    [5, 1, 1, 33],       # cache lengths 0, 5, 6, 7
])
def test_step_decoding_matches_full_forward(chunks):
    torch.manual_seed(0)
    model = ELRModel(tiny_config()).eval()
    byte_ids, patch_ids, next_starts = random_sequence(40, seed=1)
    with torch.no_grad():
        full = model(byte_ids, patch_ids)[0]
    stepped = step_logits(model, byte_ids[0].tolist(), next_starts, chunks)
    assert stepped.shape == full.shape
    assert (stepped - full).abs().max().item() <= STEP_TOLERANCE


def test_byte_patching_steps_match_full_forward():
    torch.manual_seed(0)
    model = ELRModel(tiny_config(patching="byte")).eval()
    byte_ids, patch_ids, next_starts = random_sequence(24, seed=2, start_probability=1.0)
    with torch.no_grad():
        full = model(byte_ids, patch_ids)[0]
    stepped = step_logits(model, byte_ids[0].tolist(), next_starts, [3] * 8)
    assert (stepped - full).abs().max().item() <= STEP_TOLERANCE


def test_forward_is_causal():
    torch.manual_seed(0)
    model = ELRModel(tiny_config()).eval()
    byte_ids, patch_ids, _ = random_sequence(30, seed=3)
    changed = byte_ids.clone()
    changed[0, 20:] = (changed[0, 20:] + 1) % 256
    with torch.no_grad():
        before = model(byte_ids, patch_ids)[0]
        after = model(changed, patch_ids)[0]
    # logits up to position 19 predict bytes up to 20 and must not see the change at 20
    assert torch.equal(before[:20], after[:20])
    assert not torch.equal(before[20:], after[20:])


def test_latent_loop_runs_global_model_repeatedly():
    torch.manual_seed(0)
    model = ELRModel(tiny_config()).eval()
    empty = model.global_model.empty_cache(1)
    start = torch.randn(1, 1, model.config.d_global)
    position = torch.tensor([[0]])
    with torch.no_grad():
        twice, keys2, _ = model.latent_loop(start, position, empty, n_latent_steps=2)
        once, k, v = model.global_model(start, position, empty)
        manual, _, _ = model.global_model(once, position + 1, empty.append(position, k, v))
    assert keys2.shape[3] == 2
    assert torch.allclose(twice, manual, atol=1e-6)


def test_cache_slots_any_order_or_empty():
    """The runtime's ring buffers hold slots out of order, with empty slots at the start."""
    torch.manual_seed(0)
    model = ELRModel(tiny_config()).eval()
    stack = model.decoder
    width = model.config.d_local
    cache = stack.empty_cache(1)
    with torch.no_grad():
        for position in range(12):  # more positions than the window of 8
            positions = torch.tensor([[position]])
            _, k, v = stack(torch.randn(1, 1, width), positions, cache)
            cache = cache.append(positions, k, v)
        x = torch.randn(1, 2, width)
        new_positions = torch.tensor([[12, 13]])
        expected = stack(x, new_positions, cache)[0]

        # permute the slots and add empty ones holding garbage
        order = torch.randperm(cache.capacity)
        n_empty = 3
        empty_positions = torch.full((1, n_empty), EMPTY_POSITION)
        shuffled = Cache(
            torch.cat((empty_positions, cache.positions[:, order]), dim=1),
            [torch.cat((torch.randn(1, k.shape[1], n_empty, k.shape[3]), k[:, :, order]), dim=2)
             for k in cache.keys],
            [torch.cat((torch.randn(1, v.shape[1], n_empty, v.shape[3]), v[:, :, order]), dim=2)
             for v in cache.values])
        actual = stack(x, new_positions, shuffled)[0]
    assert (actual - expected).abs().max().item() <= STEP_TOLERANCE


def reference_ngram_hash(ids: list[int], position: int, n: int, buckets: int) -> int:
    """The hash as first defined: multiply-add over the n-gram, reduced after every step."""
    hashed = 0
    for value in ids[position - n + 1:position + 1]:
        hashed = (hashed * _HASH_BASES[n - 2] + value + 1) % buckets
    return hashed


@pytest.mark.parametrize("sizes, buckets", [((3, 4, 5), 2048), ((2, 6), 97), ((8,), 4096)])
def test_ngram_hash_matches_the_stepwise_definition(sizes, buckets):
    """Trained checkpoints depend on the exact hash values, so the vectorised form must agree."""
    history = max(sizes) - 1
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 264, (2, history + 40), generator=generator)
    hashed = ngram_hash_ids(ids, sizes, history, buckets)
    assert hashed.shape == (2, 40, len(sizes))
    for row in range(2):
        values = ids[row].tolist()
        expected = [[reference_ngram_hash(values, history + t, n, buckets) for n in sizes]
                    for t in range(40)]
        assert hashed[row].tolist() == expected


def test_ngram_hash_is_position_local():
    ids = torch.randint(0, 264, (2, 4 + 50))
    hashed = ngram_hash_ids(ids, (3,), 4, 97)[:, :, 0]
    # the hash at position t depends only on ids t-2..t (in history-shifted coordinates)
    changed = ids.clone()
    changed[:, 10] += 1
    diff = (ngram_hash_ids(changed, (3,), 4, 97)[:, :, 0] != hashed).any(dim=0)
    assert set(diff.nonzero().flatten().tolist()) <= {6, 7, 8}


def test_flops_estimate_falls_with_patch_length():
    config = ModelConfig()
    assert estimate_flops_per_byte(config, 1.0) > 2 * estimate_flops_per_byte(config, 4.0)


@pytest.mark.parametrize("field, value", [
    ("d_local", 0), ("d_global", 30), ("dropout", 1.5), ("patching", "words"),
    ("ngram_sizes", (1,)),
])
def test_invalid_config_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})
