"""KV caches of the step graphs: ring buffers that the graphs read in place.

A step graph reads a stack's cache as one positions array and one keys and one values array
per layer, and returns only the keys and values of the positions it added (see graph_io).
`KVCache.append` writes those into free slots, or over the oldest ones once the ring is
full. Attention is a causal sliding window, so a query at position q reads keys
q - window + 1 ... q: the first new position of a call needs at most window - 1 earlier
ones, and any later new position finds the rest among the call's own new positions. A ring
of window - 1 slots therefore changes no output, for any stream length, and memory stays
bounded without ever trimming or copying a cache.

The ring starts small and doubles until it reaches window - 1 slots, because every graph
call attends over all slots, empty ones included: a short stream should not pay for a full
window. Each doubling copies the filled slots once.
"""

from __future__ import annotations

import numpy as np

from elr_runtime.bundle import CacheSpec
from elr_runtime.graph_io import (
    EMPTY_POSITION,
    POSITIONS_INPUT,
    past_key_name,
    past_value_name,
)

INITIAL_CAPACITY = 16


class KVCache:
    """The cache slots of one layer stack, for batch 1."""

    def __init__(self, spec: CacheSpec, initial_capacity: int = INITIAL_CAPACITY) -> None:
        if initial_capacity < 1:
            raise ValueError(f"initial_capacity={initial_capacity} must be at least 1")
        self.spec = spec
        self.max_capacity = spec.window - 1
        self.initial_capacity = min(initial_capacity, self.max_capacity)
        self.reset()

    def reset(self) -> None:
        """Drop every entry and shrink back to the initial capacity."""
        self.size = 0  # filled slots
        self.next_slot = 0  # where the next entry goes: a free slot, or the oldest entry
        self.grows = 0
        self._allocate(self.initial_capacity)

    @property
    def capacity(self) -> int:
        return self._capacity

    def feeds(self) -> dict[str, np.ndarray]:
        """Return the cache inputs of a step graph. The arrays are updated in place."""
        return self._feeds

    def append(self, first_position: int, new_keys: np.ndarray, new_values: np.ndarray) -> None:
        """Store the keys and values of positions first_position, first_position + 1, ...

        new_keys and new_values are a graph's (n_layers, 1, n_heads, new_length, head_dim)
        outputs. Of a call longer than the ring, only the last window - 1 positions are kept.
        """
        count = new_keys.shape[3]
        if self.size + count > self._capacity and self._capacity < self.max_capacity:
            self._grow(min(self.size + count, self.max_capacity))
        capacity = self._capacity
        start = self.next_slot
        if count == 1 and capacity:  # a decode step: one slot, all layers at once
            self._keys[:, :, :, start] = new_keys[:, :, :, 0]
            self._values[:, :, :, start] = new_values[:, :, :, 0]
            self.positions[0, start] = first_position
            self.next_slot = start + 1 if start + 1 < capacity else 0
            if self.size < capacity:
                self.size += 1
            return
        keep = min(count, capacity)
        if keep == 0:
            return
        skip = count - keep
        if start + keep <= capacity:
            slots: slice | np.ndarray = slice(start, start + keep)
        else:
            slots = (start + np.arange(keep)) % capacity
        self._keys[:, :, :, slots] = new_keys[:, :, :, skip:]
        self._values[:, :, :, slots] = new_values[:, :, :, skip:]
        self.positions[0, slots] = np.arange(first_position + skip, first_position + count)
        self.next_slot = (start + keep) % capacity
        self.size = min(self.size + keep, capacity)

    # -- internals --------------------------------------------------------------------------

    def _allocate(self, capacity: int) -> None:
        self._capacity = capacity
        self.positions = np.full((1, capacity), EMPTY_POSITION, dtype=np.int64)
        # One array for all layers lets a step write every layer in one assignment. The layer
        # axis comes first, so each layer's part is contiguous and feeds a graph input as is.
        shape = (self.spec.n_layers, *self.spec.layer_shape(capacity))
        self._keys = np.zeros(shape, dtype=np.float32)
        self._values = np.zeros(shape, dtype=np.float32)
        self.keys = list(self._keys)
        self.values = list(self._values)
        self._feeds = {POSITIONS_INPUT: self.positions}
        for layer in range(self.spec.n_layers):
            self._feeds[past_key_name(layer)] = self.keys[layer]
            self._feeds[past_value_name(layer)] = self.values[layer]

    def _grow(self, needed: int) -> None:
        # the ring wraps only at full size, so before that the entries fill slots 0..size-1
        old_positions, old_keys, old_values = self.positions, self._keys, self._values
        filled = self.size
        self._allocate(min(self.max_capacity, max(needed, 2 * self.capacity)))
        self.positions[:, :filled] = old_positions[:, :filled]
        self._keys[:, :, :, :filled] = old_keys[:, :, :, :filled]
        self._values[:, :, :, :filled] = old_values[:, :, :, :filled]
        self.next_slot = filled
        self.grows += 1
