"""Pure-Python reference of the entropy patcher, used only by the tests.

It follows the C++ patcher step by step: the same counting and pruning, the same interpolated
Witten-Bell arithmetic in double precision in the same order, the same context selection, the
same file image and the same boundary rules. The tests require the C++ results to equal these
exactly, so any change to the C++ arithmetic or rules must be made here too. It is slow (about
1 MB/s or less) and meant for inputs of a few hundred bytes.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

MAX_CONTEXT_LENGTH = 8
MAX_COUNT = 2**32 - 1
BUILDER_SLOT_BYTES = 16
TABLE_FIXED_BYTES = 4096
MAX_NARROW_ORDER = 4
NARROW_CONTEXT_BYTES = 16
WIDE_CONTEXT_BYTES = 24
MAX_ENTROPY_BITS = 8.0
WORD_MASK = 2**64 - 1

MAGIC = b"ELRNGRAM"
FORMAT_VERSION = 1
HEADER_BYTES = 104
SMOOTHING_WITTEN_BELL = 1


def context_mask(order: int) -> int:
    """Return the mask that keeps the `order` most recent bytes of a history word."""
    return WORD_MASK if order >= MAX_CONTEXT_LENGTH else (1 << (8 * order)) - 1


def to_float32(value: float) -> float:
    """Round a double to the nearest float32, as a C++ static_cast<float> does."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def builder_max_entries(max_builder_bytes: int) -> int:
    """Return the most (context, byte) pairs a count table of max_builder_bytes holds."""
    slots = 1
    while slots * 2 <= max_builder_bytes // BUILDER_SLOT_BYTES:
        slots *= 2
    return slots // 4 * 3


def context_cost(order: int) -> int:
    """Return the table budget in bytes that one context of `order` bytes costs."""
    return NARROW_CONTEXT_BYTES if order <= MAX_NARROW_ORDER else WIDE_CONTEXT_BYTES


@dataclass
class ReferenceTable:
    """Entropies in bits (float32 values) of the kept contexts, keyed by (order, key)."""

    context_length: int
    order0_entropy_bits: float
    contexts: dict[tuple[int, int], float] = field(default_factory=dict)

    def entropy_at(self, data: bytes, t: int) -> float:
        """Return the entropy that predicts data[t] from its longest stored context."""
        for order in range(min(t, self.context_length), 0, -1):
            key = int.from_bytes(data[t - order : t], "big")
            entropy = self.contexts.get((order, key))
            if entropy is not None:
                return entropy
        return self.order0_entropy_bits

    def entropies(self, data: bytes) -> list[float]:
        return [self.entropy_at(data, t) for t in range(len(data))]

    def n_contexts_of_order(self, order: int) -> int:
        if order == 0:
            return 1
        return sum(1 for context_order, _ in self.contexts if context_order == order)

    def to_bytes(self) -> bytes:
        """Return the version-1 file image of the table."""
        k = self.context_length
        counts = [self.n_contexts_of_order(order) for order in range(MAX_CONTEXT_LENGTH + 1)]
        counts = [count if order <= k else 0 for order, count in enumerate(counts)]
        payload = bytearray(struct.pack("<f", self.order0_entropy_bits))
        for order in range(1, k + 1):
            keys = sorted(key for context_order, key in self.contexts if context_order == order)
            for key in keys:
                payload += key.to_bytes(order, "big")
                payload += struct.pack("<f", self.contexts[(order, key)])
        file_bytes = HEADER_BYTES + len(payload) + 4
        header = MAGIC + struct.pack(
            "<IIIIQ9Q", FORMAT_VERSION, HEADER_BYTES, k, SMOOTHING_WITTEN_BELL, file_bytes, *counts
        )
        image = header + bytes(payload)
        return image + struct.pack("<I", zlib.crc32(image))


def table_from_bytes(image: bytes) -> ReferenceTable:
    """Parse a version-1 file image (assumed valid) into a ReferenceTable."""
    k = struct.unpack_from("<I", image, 16)[0]
    counts = struct.unpack_from("<9Q", image, 32)
    offset = HEADER_BYTES
    table = ReferenceTable(k, struct.unpack_from("<f", image, offset)[0])
    offset += 4
    for order in range(1, k + 1):
        for _ in range(counts[order]):
            key = int.from_bytes(image[offset : offset + order], "big")
            table.contexts[(order, key)] = struct.unpack_from("<f", image, offset + order)[0]
            offset += order + 4
    return table


class ReferenceBuilder:
    """Counts (context, next byte) pairs with the C++ builder's pruning rule."""

    def __init__(self, context_length: int, max_table_bytes: int, max_builder_bytes: int):
        self.context_length = context_length
        self.max_table_bytes = max_table_bytes
        self.max_entries = builder_max_entries(max_builder_bytes)
        self.counts: dict[tuple[int, int, int], int] = {}
        self.history = 0
        self.position = 0
        self.n_prunes = 0

    def begin_document(self) -> None:
        self.history = 0
        self.position = 0

    def add(self, data: bytes) -> None:
        k = self.context_length
        for byte in data:
            if len(self.counts) + k + 1 > self.max_entries:
                self._prune()
            for order in range(min(self.position, k) + 1):
                pair = (order, self.history & context_mask(order), byte)
                self.counts[pair] = min(self.counts.get(pair, 0) + 1, MAX_COUNT)
            self.history = ((self.history << 8) | byte) & WORD_MASK
            self.position += 1

    def add_document(self, data: bytes) -> None:
        self.begin_document()
        self.add(data)

    def _prune(self) -> None:
        target = self.max_entries // 2
        values = sorted(self.counts.values(), reverse=True)
        floor = max(1, values[target]) if len(values) > target else 1
        self.counts = {pair: count for pair, count in self.counts.items() if count > floor}
        self.n_prunes += 1

    def finalize(self) -> ReferenceTable:
        # Group the pairs by context, each context's bytes in increasing order.
        by_context: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for (order, key, byte), count in sorted(self.counts.items()):
            by_context.setdefault((order, key), []).append((byte, count))
        totals = {context: sum(c for _, c in pairs) for context, pairs in by_context.items()}

        # Keep the best-ranked prefix whose costs fit the budget.
        ranking = sorted(by_context, key=lambda context: (-totals[context], *context))
        budget = self.max_table_bytes - TABLE_FIXED_BYTES
        kept = []
        used = 0
        for context in ranking:
            cost = context_cost(context[0])
            if used + cost > budget:
                break
            used += cost
            kept.append(context)

        # Witten-Bell probabilities and entropies, shorter contexts first.
        probabilities: dict[tuple[int, int, int], float] = {}
        entropies: dict[tuple[int, int], float] = {}
        for order, key in sorted(kept):
            pairs = by_context[(order, key)]
            parent = (order - 1, key & context_mask(order - 1)) if order > 0 else None
            n = len(pairs)
            denominator = float(totals[(order, key)] + n)
            lam = n / denominator
            seen_entropy = 0.0
            seen_parent_mass = 0.0
            seen_parent_plogp = 0.0
            for byte, count in pairs:
                q = 1.0 / 256.0 if parent is None else probabilities[(*parent, byte)]
                p = (count + n * q) / denominator
                probabilities[(order, key, byte)] = p
                seen_entropy -= p * math.log2(p)
                seen_parent_mass += q
                seen_parent_plogp += q * math.log2(q)
            parent_entropy = MAX_ENTROPY_BITS if parent is None else entropies[parent]
            unseen_parent_mass = 1.0 - seen_parent_mass
            entropy = (
                seen_entropy
                - lam * math.log2(lam) * unseen_parent_mass
                + lam * (parent_entropy + seen_parent_plogp)
            )
            entropies[(order, key)] = min(max(entropy, 0.0), MAX_ENTROPY_BITS)

        table = ReferenceTable(
            context_length=self.context_length,
            order0_entropy_bits=to_float32(entropies.get((0, 0), MAX_ENTROPY_BITS)),
        )
        for (order, key), entropy in entropies.items():
            if order > 0:
                table.contexts[(order, key)] = to_float32(entropy)
        return table


@dataclass(frozen=True)
class ReferenceSettings:
    threshold: float = 3.0
    relative_threshold: float | None = None
    mode: str = "global"
    max_patch_length: int = 16
    boundary_bytes: frozenset[int] = frozenset()


def patch_start_mask_from_entropies(
    data: bytes, entropies: Sequence[float], settings: ReferenceSettings
) -> list[bool]:
    """Return whether each byte starts a patch, by the rules the C++ Patcher documents."""
    mask = []
    length = 0
    for t in range(len(data)):
        if t == 0:
            start = True
        else:
            rise = entropies[t] - entropies[t - 1]
            if settings.mode == "global":
                rule = entropies[t] > settings.threshold
            elif settings.mode == "relative":
                rule = rise > settings.relative_threshold
            else:
                rule = entropies[t] > settings.threshold and rise > settings.relative_threshold
            start = (
                data[t - 1] in settings.boundary_bytes
                or length >= settings.max_patch_length
                or rule
            )
        length = 1 if start else length + 1
        mask.append(start)
    return mask


def patch_start_mask(table: ReferenceTable, data: bytes, settings: ReferenceSettings) -> list[bool]:
    return patch_start_mask_from_entropies(data, table.entropies(data), settings)


def patch_lengths_from_mask(mask: Sequence[bool]) -> list[int]:
    starts = [t for t, start in enumerate(mask) if start]
    return [end - begin for begin, end in pairwise([*starts, len(mask)])]


def calibrate_threshold(
    table: ReferenceTable,
    documents: Iterable[bytes],
    target_mean_patch_length: float,
    settings: ReferenceSettings,
) -> float:
    """Return the threshold the C++ calibration returns, by trying every candidate."""
    documents = [bytes(document) for document in documents]
    calibrate_relative = settings.mode == "relative"

    # The signal of each position that the calibrated threshold decides.
    values = set()
    per_document = []
    for document in documents:
        entropies = table.entropies(document)
        per_document.append(entropies)
        for t in range(1, len(document)):
            if document[t - 1] in settings.boundary_bytes:
                continue
            rise = entropies[t] - entropies[t - 1]
            if settings.mode == "global":
                values.add(entropies[t])
            elif settings.mode == "relative":
                values.add(rise)
            elif rise > settings.relative_threshold:
                values.add(entropies[t])
    values = sorted(values)

    def settings_at(threshold: float) -> ReferenceSettings:
        if calibrate_relative:
            return ReferenceSettings(
                settings.threshold,
                threshold,
                settings.mode,
                settings.max_patch_length,
                settings.boundary_bytes,
            )
        return ReferenceSettings(
            threshold,
            settings.relative_threshold,
            settings.mode,
            settings.max_patch_length,
            settings.boundary_bytes,
        )

    def mean_at(threshold: float) -> float:
        n_bytes = 0
        n_patches = 0
        for document, entropies in zip(documents, per_document, strict=True):
            mask = patch_start_mask_from_entropies(document, entropies, settings_at(threshold))
            n_bytes += len(document)
            n_patches += sum(mask)
        return n_bytes / n_patches

    if not values:
        return MAX_ENTROPY_BITS

    def candidate(i: int) -> float:
        if i == 0:
            return values[0] - 1.0
        if i == len(values):
            return values[-1] + 1.0
        low, high = values[i - 1], values[i]
        middle = low + (high - low) / 2.0
        return middle if low < middle < high else low

    means = [mean_at(candidate(i)) for i in range(len(values) + 1)]
    reaching = [i for i, mean in enumerate(means) if mean >= target_mean_patch_length]
    best = reaching[0] if reaching else len(values)
    if best > 0 and abs(means[best - 1] - target_mean_patch_length) < abs(
        means[best] - target_mean_patch_length
    ):
        best -= 1
    return candidate(best)
