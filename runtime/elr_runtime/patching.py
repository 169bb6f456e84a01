"""Patch boundaries for the three patching schemes a model can be trained with.

"entropy" uses the C++ entropy patcher and its frequency table; "fixed" starts a patch every
`fixed_patch_length` bytes; "byte" makes every byte its own patch (a plain byte-level
transformer). Training and the runtime both call these, so their boundaries always agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from elr_runtime.patcher import FrequencyTable, Patcher


class PatchRule:
    """Batch and incremental patch boundaries for one model.

    Use `from_model_config` to build one from a model config dict and the patcher settings.
    """

    def __init__(self, mode: str, patcher: Patcher | None = None,
                 fixed_patch_length: int = 4) -> None:
        if mode == "entropy" and patcher is None:
            raise ValueError("patching mode 'entropy' needs a Patcher with a frequency table")
        if mode not in ("entropy", "fixed", "byte"):
            raise ValueError(f"unknown patching mode {mode!r}: use 'entropy', 'fixed' or 'byte'")
        self.mode = mode
        self.patcher = patcher
        self.fixed_patch_length = fixed_patch_length if mode == "fixed" else 1

    @classmethod
    def from_settings(cls, model_config: Mapping[str, Any], table: FrequencyTable | None,
                      patcher_settings: Mapping[str, Any] | None) -> PatchRule:
        mode = model_config["patching"]
        patcher = None
        if mode == "entropy":
            if table is None or patcher_settings is None:
                raise ValueError("entropy patching needs a frequency table and patcher settings")
            patcher = Patcher.from_settings(table, dict(patcher_settings))
        return cls(mode, patcher, int(model_config.get("fixed_patch_length", 4)))

    def patch_start_mask(self, data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
        """Return a bool array: True where a byte of `data` starts a patch (True at 0)."""
        if self.mode == "entropy":
            assert self.patcher is not None
            return np.asarray(self.patcher.patch_start_mask(data), dtype=bool)
        n = len(data)
        return np.arange(n) % self.fixed_patch_length == 0

    def incremental(self) -> IncrementalRule:
        return IncrementalRule(self)


class IncrementalRule:
    """Patch boundaries one byte at a time, identical to `PatchRule.patch_start_mask`."""

    def __init__(self, rule: PatchRule) -> None:
        self._rule = rule
        self._inner = rule.patcher.incremental() if rule.patcher is not None else None
        self._count = 0

    def next_starts_patch(self) -> bool:
        """Return whether the next byte pushed starts a new patch."""
        if self._inner is not None:
            return bool(self._inner.next_starts_patch())
        return self._count % self._rule.fixed_patch_length == 0

    def push(self, byte: int) -> None:
        if self._inner is not None:
            self._inner.push(byte)
        self._count += 1

    def reset(self) -> None:
        if self._inner is not None:
            self._inner.reset()
        self._count = 0
