"""KV caches of the step graphs, kept within the attention window.

Every step graph takes `past_keys`/`past_values` and returns `present_keys`/`present_values`
with the new positions appended. The runtime keeps the present tensors as the next call's
past without copying them, except when it trims them.

Trimming policy: attention is a causal sliding window, so a query at position q reads keys
q - window + 1 ... q. Whatever the number of new positions in a call, the first of them needs
at most window - 1 cached positions, so the older ones can be dropped without changing any
output (the graphs assume only that cached positions are contiguous and end just before the
first new one, which dropping from the front keeps true). Trimming copies the kept part, so
it is done in chunks: a cache may grow to window - 1 + slack positions and is then cut back
to window - 1. Each call already copies the whole cache inside the graph (the concatenation
of past and new), so a longer cache costs a little every step while a trim costs window - 1
positions once per `slack` steps; slack = sqrt(2 * window) minimises the sum of the two.
Memory per cache is therefore bounded by window - 1 + slack positions for any stream length.
"""

from __future__ import annotations

import math

import numpy as np

from elr_runtime.bundle import CacheSpec


def default_slack(window: int) -> int:
    """Return the number of positions a cache may grow past window - 1 before a trim."""
    return max(1, math.isqrt(2 * window))


class KVCache:
    """The past keys and values of one layer stack, for batch 1."""

    def __init__(self, spec: CacheSpec, slack: int | None = None) -> None:
        self.spec = spec
        self.keep = spec.window - 1
        self.slack = default_slack(spec.window) if slack is None else slack
        if self.slack < 1:
            raise ValueError(f"slack={self.slack} must be at least 1")
        self.keys = np.zeros(spec.empty_shape(), dtype=np.float32)
        self.values = np.zeros(spec.empty_shape(), dtype=np.float32)
        self.trims = 0

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return self.keys.shape[3]

    def update(self, present_keys: np.ndarray, present_values: np.ndarray) -> None:
        """Keep a graph's present tensors as the next past, trimming when they grew too long."""
        length = present_keys.shape[3]
        if length <= self.keep + self.slack:
            self.keys = present_keys
            self.values = present_values
            return
        # the copy makes the kept part contiguous, as onnxruntime needs it for the next call
        self.keys = np.ascontiguousarray(present_keys[:, :, :, length - self.keep:])
        self.values = np.ascontiguousarray(present_values[:, :, :, length - self.keep:])
        self.trims += 1

    def reset(self) -> None:
        self.keys = np.zeros(self.spec.empty_shape(), dtype=np.float32)
        self.values = np.zeros(self.spec.empty_shape(), dtype=np.float32)
        self.trims = 0

    def feeds(self) -> dict[str, np.ndarray]:
        return {"past_keys": self.keys, "past_values": self.values}
