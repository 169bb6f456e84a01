"""Sampling, stop sequences and KV cache trimming, without a model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from elr_runtime.bundle import CacheSpec
from elr_runtime.cache import KVCache
from elr_runtime.generate import StopMatcher
from elr_runtime.graph_io import (
    BOS_ID,
    BOT_ID,
    EMPTY_POSITION,
    EOS_ID,
    PAD_ID,
    VOCAB_SIZE,
    past_key_name,
)
from elr_runtime.sampling import Sampler, SamplingSettings, mask_special_ids, probabilities


def logits_with(values: dict[int, float], base: float = 0.0) -> np.ndarray:
    logits = np.full(VOCAB_SIZE, base, dtype=np.float32)
    for index, value in values.items():
        logits[index] = value
    return logits


# -- sampling -------------------------------------------------------------------------------


def test_greedy_picks_highest_byte():
    sampler = Sampler(SamplingSettings())
    assert sampler.next_id(logits_with({65: 3.0, 66: 2.0})) == 65


def test_greedy_ignores_special_ids_except_eos():
    sampler = Sampler(SamplingSettings())
    assert sampler.next_id(logits_with({BOS_ID: 9.0, PAD_ID: 9.0, BOT_ID: 9.0, 70: 1.0})) == 70
    assert sampler.next_id(logits_with({EOS_ID: 9.0, 70: 1.0})) == EOS_ID


def test_mask_keeps_bytes_and_eos():
    scores = mask_special_ids(logits_with({EOS_ID: 1.5}))
    assert np.all(np.isfinite(scores[:256]))
    assert scores[EOS_ID] == 1.5
    assert np.all(np.isneginf(np.delete(scores[256:], EOS_ID - 256)))


def test_sampling_never_draws_masked_ids():
    sampler = Sampler(SamplingSettings(temperature=5.0, seed=1))
    logits = logits_with({BOS_ID: 50.0, PAD_ID: 50.0}, base=0.0)
    drawn = {sampler.next_id(logits) for _ in range(2000)}
    assert BOS_ID not in drawn
    assert PAD_ID not in drawn
    assert len(drawn) > 200  # a high temperature spreads over the bytes


def test_same_seed_gives_same_draws():
    logits = np.random.default_rng(0).normal(size=VOCAB_SIZE).astype(np.float32)
    first = Sampler(SamplingSettings(temperature=1.0, seed=42))
    second = Sampler(SamplingSettings(temperature=1.0, seed=42))
    assert [first.next_id(logits) for _ in range(100)] == \
        [second.next_id(logits) for _ in range(100)]


def test_different_seeds_give_different_draws():
    logits = np.zeros(VOCAB_SIZE, dtype=np.float32)
    first = Sampler(SamplingSettings(temperature=1.0, seed=1))
    second = Sampler(SamplingSettings(temperature=1.0, seed=2))
    assert [first.next_id(logits) for _ in range(50)] != \
        [second.next_id(logits) for _ in range(50)]


def test_missing_seed_draws_a_reusable_one():
    logits = np.zeros(VOCAB_SIZE, dtype=np.float32)
    sampler = Sampler(SamplingSettings(temperature=1.0))
    again = Sampler(SamplingSettings(temperature=1.0, seed=sampler.seed))
    assert [sampler.next_id(logits) for _ in range(50)] == \
        [again.next_id(logits) for _ in range(50)]


def test_top_k_one_is_greedy():
    logits = np.random.default_rng(1).normal(size=VOCAB_SIZE).astype(np.float32)
    greedy = Sampler(SamplingSettings()).next_id(logits)
    sampler = Sampler(SamplingSettings(temperature=1.0, top_k=1, seed=0))
    assert {sampler.next_id(logits) for _ in range(200)} == {greedy}


def test_top_k_limits_the_support():
    logits = logits_with({10: 5.0, 11: 4.9, 12: 4.8, 13: 4.7})
    sampler = Sampler(SamplingSettings(temperature=1.0, top_k=3, seed=0))
    assert {sampler.next_id(logits) for _ in range(500)} == {10, 11, 12}


def test_top_p_keeps_smallest_set_reaching_p():
    # probabilities about 0.5, 0.3, 0.2 and tiny values elsewhere
    logits = logits_with({1: math.log(0.5), 2: math.log(0.3), 3: math.log(0.2)}, base=-40.0)
    probs = probabilities(mask_special_ids(logits), SamplingSettings(temperature=1.0, top_p=0.7))
    assert set(np.flatnonzero(probs)) == {1, 2}
    assert probs.sum() == pytest.approx(1.0)


def test_tiny_top_p_is_greedy():
    logits = np.random.default_rng(2).normal(size=VOCAB_SIZE).astype(np.float32)
    greedy = Sampler(SamplingSettings()).next_id(logits)
    sampler = Sampler(SamplingSettings(temperature=1.0, top_p=1e-9, seed=0))
    assert {sampler.next_id(logits) for _ in range(100)} == {greedy}


def test_sampling_follows_probabilities():
    logits = logits_with({1: math.log(0.6), 2: math.log(0.3), 3: math.log(0.1)}, base=-60.0)
    sampler = Sampler(SamplingSettings(temperature=1.0, seed=3))
    draws = np.array([sampler.next_id(logits) for _ in range(20000)])
    # three binomial standard deviations at n = 20000 are under 0.011
    assert np.mean(draws == 1) == pytest.approx(0.6, abs=0.015)
    assert np.mean(draws == 2) == pytest.approx(0.3, abs=0.015)
    assert np.mean(draws == 3) == pytest.approx(0.1, abs=0.015)


@pytest.mark.parametrize("temperature", [1e-30, 1e-300, 1e30, 1e300])
def test_extreme_temperatures_stay_finite(temperature):
    logits = np.random.default_rng(4).normal(size=VOCAB_SIZE).astype(np.float32)
    sampler = Sampler(SamplingSettings(temperature=temperature, seed=0))
    probs = probabilities(mask_special_ids(logits), sampler.settings)
    assert np.all(np.isfinite(probs))
    assert probs.sum() == pytest.approx(1.0)
    assert 0 <= sampler.next_id(logits) < 256 or sampler.next_id(logits) == EOS_ID


@pytest.mark.parametrize("settings", [
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature=float("inf")),
    dict(top_k=-1), dict(top_k=2.5), dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-1.0),
    dict(seed=-1), dict(seed=1.5),
])
def test_invalid_settings_raise(settings):
    with pytest.raises(ValueError, match="invalid sampling settings"):
        SamplingSettings(**settings)


# -- stop sequences -------------------------------------------------------------------------


def push_all(matcher: StopMatcher, data: bytes) -> tuple[bytes, bool]:
    released = bytearray()
    for byte in data:
        out, stopped = matcher.push(byte)
        released += out
        if stopped:
            return bytes(released), True
    return bytes(released + matcher.flush()), False


def test_stop_sequence_is_cut_from_output():
    assert push_all(StopMatcher([b"END"]), b"hello END more") == (b"hello ", True)


def test_partial_stop_sequence_is_released():
    assert push_all(StopMatcher([b"END"]), b"the ENd of EN") == (b"the ENd of EN", False)


def test_stop_prefix_bytes_are_delayed():
    matcher = StopMatcher([b"\n\n"])
    assert matcher.push(ord("a")) == (b"a", False)
    assert matcher.push(ord("\n")) == (b"", False)
    assert matcher.push(ord("b")) == (b"\nb", False)


def test_earliest_ending_stop_wins():
    assert push_all(StopMatcher([b"abcd", b"bc"]), b"xabcd") == (b"xa", True)


def test_overlapping_prefix_is_found():
    assert push_all(StopMatcher([b"aab"]), b"xaaab") == (b"xa", True)


def test_no_stop_sequences_release_every_byte():
    matcher = StopMatcher([])
    assert matcher.push(0xF0) == (b"\xf0", False)


def test_empty_stop_sequence_is_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        StopMatcher([b""])


# -- KV cache ring buffers -------------------------------------------------------------------


def new_entries(spec: CacheSpec, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Return graph outputs for `count` positions from `start`: keys hold their position."""
    shape = (spec.n_layers, 1, spec.n_heads, count, spec.head_dim)
    keys = np.broadcast_to(np.arange(start, start + count, dtype=np.float32)[:, None],
                           shape).copy()
    return keys, -keys


def cache_contents(cache: KVCache) -> dict[int, float]:
    """Map each filled slot's position to the key stored with it (layer 0, head 0)."""
    return {int(p): float(cache.keys[0][0, 0, slot, 0])
            for slot, p in enumerate(cache.positions[0]) if p != EMPTY_POSITION}


@pytest.mark.parametrize("calls", [[1] * 40, [5, 1, 30, 1, 1, 2], [3] * 9, [100], [7, 200, 1]])
def test_ring_keeps_last_window_positions(calls):
    spec = CacheSpec(n_layers=2, n_heads=2, head_dim=4, window=16)
    cache = KVCache(spec, initial_capacity=4)
    position = 0
    for count in calls:
        cache.append(position, *new_entries(spec, position, count))
        position += count
        stored = cache_contents(cache)
        expected = range(max(0, position - (spec.window - 1)), position)
        assert sorted(stored) == list(expected)
        assert all(key == p for p, key in stored.items())  # each key stayed with its position
        assert cache.capacity <= spec.window - 1
        values = cache.values[1][0, 1, :, 3]
        filled = cache.positions[0] != EMPTY_POSITION
        assert (values[filled] == -cache.positions[0][filled]).all()


def test_ring_grows_by_doubling_then_writes_in_place():
    spec = CacheSpec(n_layers=1, n_heads=1, head_dim=2, window=40)
    cache = KVCache(spec, initial_capacity=4)
    capacities = []
    for position in range(60):
        cache.append(position, *new_entries(spec, position, 1))
        capacities.append(cache.capacity)
    assert sorted(set(capacities)) == [4, 8, 16, 32, 39]
    full = cache.keys[0]
    feeds = cache.feeds()
    cache.append(60, *new_entries(spec, 60, 1))
    assert cache.keys[0] is full
    assert feeds[past_key_name(0)] is full
    cache.reset()
    assert cache.capacity == 4
    assert cache_contents(cache) == {}
