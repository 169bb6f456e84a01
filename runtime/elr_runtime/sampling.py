"""Choosing the next byte from the decoder's logits: greedy, temperature, top-k and top-p.

Only the 256 byte values and EOS can be chosen: the other special ids (BOS, the thought
markers, PAD) are masked out first, as the PyTorch reference generation does. Sampling uses
a numpy Generator seeded from `SamplingSettings.seed`, so the same seed and settings give
the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from elr_runtime.graph_io import EOS_ID

N_BYTE_VALUES = 256


@dataclass(frozen=True)
class SamplingSettings:
    """Settings of the next-byte choice; the defaults give greedy decoding."""

    temperature: float = 0.0  # 0 picks the most likely byte; higher values flatten the choice
    top_k: int = 0  # sample only among the k most likely ids; 0 turns the filter off
    top_p: float = 1.0  # sample only among the most likely ids whose probabilities sum to p
    seed: int | None = None  # seed of the numpy Generator; None draws one from the OS

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or self.temperature < 0:
            problems.append(f"temperature={self.temperature!r} must be a finite number >= 0")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k={self.top_k!r} must be an integer >= 0 (0 turns it off)")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p={self.top_p!r} must be in (0, 1] (1 turns it off)")
        if self.seed is not None and (isinstance(self.seed, bool)
                                      or not isinstance(self.seed, int) or self.seed < 0):
            problems.append(f"seed={self.seed!r} must be an integer >= 0")
        if problems:
            raise ValueError("invalid sampling settings: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def mask_special_ids(logits: np.ndarray) -> np.ndarray:
    """Return a float64 copy of (vocab_size,) logits with every special id but EOS at -inf."""
    scores = logits.astype(np.float64)
    eos_score = scores[EOS_ID]
    scores[N_BYTE_VALUES:] = -np.inf
    scores[EOS_ID] = eos_score
    return scores


def probabilities(scores: np.ndarray, settings: SamplingSettings) -> np.ndarray:
    """Return the sampling distribution over ids for masked float64 scores (temperature > 0).

    Scores are shifted by their maximum before the division by temperature, so that a tiny
    temperature drives every other score to -inf instead of overflowing.
    """
    scaled = (scores - scores.max()) / settings.temperature
    if 0 < settings.top_k < scaled.size:
        kth = np.partition(scaled, -settings.top_k)[-settings.top_k]
        scaled[scaled < kth] = -np.inf
    probs = np.exp(scaled)
    probs /= probs.sum()
    if settings.top_p < 1.0:
        # keep the most likely ids until their sum reaches top_p; the first id is always kept
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        keep = np.cumsum(sorted_probs) - sorted_probs < settings.top_p
        filtered = np.zeros_like(probs)
        filtered[order[keep]] = sorted_probs[keep]
        probs = filtered / filtered.sum()
    return probs


class Sampler:
    """Picks next-byte ids with one seeded random stream."""

    def __init__(self, settings: SamplingSettings) -> None:
        self.settings = settings
        self.seed = settings.seed if settings.seed is not None else _fresh_seed()
        self._rng = np.random.default_rng(self.seed)

    def next_id(self, logits: np.ndarray) -> int:
        """Return the id chosen from (vocab_size,) logits: a byte value or EOS_ID."""
        scores = mask_special_ids(logits)
        if self.settings.greedy:
            return int(np.argmax(scores))
        probs = probabilities(scores, self.settings)
        cumulative = np.cumsum(probs)
        # inverse-CDF draw: side="right" never lands on an id of probability 0
        index = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1],
                                    side="right"))
        if index >= probs.size:  # rounding put the draw at the very top: take the last live id
            index = int(np.flatnonzero(probs)[-1])
        return index


def _fresh_seed() -> int:
    """Return a 63-bit seed from the OS entropy source, small enough to print and reuse."""
    return int(np.random.SeedSequence().entropy) % (1 << 63)
