"""Model configuration, saved with every checkpoint and copied into every bundle manifest."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from elr_runtime.graph_io import VOCAB_SIZE

PATCHING_MODES = ("entropy", "fixed", "byte")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and patching scheme of an ELR-LRT model.

    The local encoder and decoder run once per byte; the global model runs once per patch,
    so it can be several times wider than the local models at a similar cost per byte.
    """

    vocab_size: int = VOCAB_SIZE  # 256 byte values plus special ids; fixed by graph_io
    d_local: int = 128  # width of the byte-level encoder and decoder
    n_local_heads: int = 4  # attention heads in the local layers; must divide d_local
    n_encoder_layers: int = 1  # causal byte-level layers before pooling into patches
    n_decoder_layers: int = 2  # causal byte-level layers that predict the next byte
    local_window: int = 128  # bytes each local position attends to, itself included
    ngram_sizes: tuple[int, ...] = (3, 4, 5)  # hashed n-gram embeddings added to each byte
    ngram_buckets: int = 2048  # rows per n-gram hash table; more rows, fewer collisions
    d_global: int = 256  # width of the global latent transformer over patches
    n_global_heads: int = 4  # attention heads in the global layers; must divide d_global
    n_global_layers: int = 4  # global layers; most of the parameters live here
    global_window: int = 256  # patches (and latent steps) each global position attends to
    mlp_ratio: int = 4  # hidden width of every MLP as a multiple of its model width
    dropout: float = 0.0  # dropout on attention outputs and MLPs during training
    rope_base: float = 10000.0  # base of the rotary position embedding frequencies
    patching: str = "entropy"  # "entropy" (C++ patcher), "fixed" (fixed_patch_length), "byte"
    fixed_patch_length: int = 4  # patch length when patching == "fixed"

    def __post_init__(self) -> None:
        problems = []
        for name in ("d_local", "n_local_heads", "n_encoder_layers", "n_decoder_layers",
                     "local_window", "ngram_buckets", "d_global", "n_global_heads",
                     "n_global_layers", "global_window", "mlp_ratio", "fixed_patch_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r} must be a positive integer")
        if not problems:
            if self.d_local % self.n_local_heads or (self.d_local // self.n_local_heads) % 2:
                problems.append(f"d_local={self.d_local} must be a multiple of "
                                f"2 * n_local_heads={2 * self.n_local_heads}")
            if self.d_global % self.n_global_heads or (self.d_global // self.n_global_heads) % 2:
                problems.append(f"d_global={self.d_global} must be a multiple of "
                                f"2 * n_global_heads={2 * self.n_global_heads}")
        if self.vocab_size != VOCAB_SIZE:
            problems.append(f"vocab_size={self.vocab_size} must be {VOCAB_SIZE}")
        if not self.ngram_sizes or any(n < 2 or n > 8 for n in self.ngram_sizes):
            problems.append(f"ngram_sizes={self.ngram_sizes!r} must be sizes between 2 and 8")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout} must be in [0, 1)")
        if self.patching not in PATCHING_MODES:
            problems.append(f"patching={self.patching!r} must be one of {PATCHING_MODES}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def ngram_history(self) -> int:
        """Number of bytes before the current one that the n-gram hashes read."""
        return max(self.ngram_sizes) - 1

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ngram_sizes"] = list(self.ngram_sizes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config fields {unknown}: the checkpoint was written "
                             "by a different version of elr-lrt")
        values = dict(data)
        if "ngram_sizes" in values:
            values["ngram_sizes"] = tuple(values["ngram_sizes"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

