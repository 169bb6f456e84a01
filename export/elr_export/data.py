"""Training data: documents of bytes, their patch boundaries, and batches of windows.

Every input file is one document and documents never share a window, so no patch crosses a
document boundary. The validation split is the last `val_fraction` of every document, cut at
load time; those bytes are never trained on.
"""

from __future__ import annotations

import glob
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from elr_runtime.graph_io import BOS_ID, EOS_ID, PAD_ID
from elr_runtime.patching import PatchRule

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Training data is missing, empty or unreadable."""


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Expand files, directories (all files below them) and glob patterns into file paths."""
    paths: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
        else:
            matches = [pattern]
        if not matches:
            raise DataError(f"no file matches {pattern!r}: check the path or quote the glob")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file())
                if not files:
                    raise DataError(f"directory {path} contains no files: pass text files")
                paths.extend(files)
            elif path.is_file():
                paths.append(path)
            else:
                raise DataError(f"data file {path} not found: check the path")
    return paths


def read_documents(paths: Sequence[Path]) -> list[bytes]:
    """Read each file as one document of raw bytes (any encoding: bytes are bytes)."""
    documents = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read {path}: {err.strerror}") from err
        if not data:
            logger.warning("skipping empty file %s", path)
            continue
        documents.append(data)
    if not documents:
        raise DataError("all data files are empty: pass files that contain text")
    return documents


def split_documents(documents: Sequence[bytes],
                    val_fraction: float) -> tuple[list[bytes], list[bytes]]:
    """Split every document into a training head and a validation tail of `val_fraction`."""
    train, val = [], []
    for doc in documents:
        cut = len(doc) - int(round(len(doc) * val_fraction))
        if cut > 0:
            train.append(doc[:cut])
        if cut < len(doc):
            val.append(doc[cut:])
    return train, val


@dataclass
class PatchedDocument:
    """A document with its patch start mask over len(data) + 1 positions (the last one is EOS)."""

    data: np.ndarray  # (n,) uint8
    start_mask: np.ndarray  # (n + 1,) bool

    @property
    def patch_starts(self) -> np.ndarray:
        return np.flatnonzero(self.start_mask[:-1])


def patch_documents(documents: Sequence[bytes], rule: PatchRule,
                    cache_dir: Path | None = None) -> list[PatchedDocument]:
    """Compute (or load from `cache_dir`) the patch start mask of every document."""
    out = []
    for doc in documents:
        cache_file = None
        if cache_dir is not None:
            key = hashlib.sha256(doc + repr(_rule_key(rule)).encode()).hexdigest()[:24]
            cache_file = cache_dir / f"patches-{key}.npy"
        if cache_file is not None and cache_file.is_file():
            mask = np.load(cache_file)
        else:
            # causality: the boundary of the EOS position does not depend on the byte there
            mask = rule.patch_start_mask(doc + b"\x00")
            if cache_file is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(".tmp.npy")
                np.save(tmp, mask)
                tmp.replace(cache_file)
        out.append(PatchedDocument(np.frombuffer(doc, dtype=np.uint8), mask))
    return out


def _rule_key(rule: PatchRule) -> tuple:
    if rule.patcher is None:
        return (rule.mode, rule.fixed_patch_length)
    return (rule.mode, sorted(rule.patcher.settings().items()),
            hashlib.sha256(rule.patcher.table.to_bytes()).hexdigest())


def mean_patch_length(docs: Sequence[PatchedDocument]) -> float:
    n_bytes = sum(len(d.data) for d in docs)
    n_patches = sum(int(d.start_mask[:-1].sum()) for d in docs)
    return n_bytes / max(n_patches, 1)


def make_window(doc: PatchedDocument, start: int, seq_len: int) -> tuple[np.ndarray, ...]:
    """Cut one training window of `seq_len` positions starting at patch start `start`.

    Returns (byte_ids (seq_len,), targets (seq_len,), patch_ids (seq_len + 1,)) as int64:
    byte_ids are BOS then the document bytes; targets are the byte after each position, EOS
    after the last byte, then PAD (ignored by the loss).
    """
    n = len(doc.data)
    extended = np.full(seq_len + 1, PAD_ID, dtype=np.int64)  # BOS, bytes, EOS, PAD...
    extended[0] = BOS_ID
    take = min(seq_len, n - start)
    extended[1:1 + take] = doc.data[start:start + take]
    if take < seq_len:
        extended[1 + take] = EOS_ID

    mask = np.ones(seq_len, dtype=bool)  # start flags of window positions 1..seq_len
    mask_take = min(seq_len, n + 1 - start)
    mask[:mask_take] = doc.start_mask[start:start + mask_take]
    mask[0] = True
    patch_ids = np.zeros(seq_len + 1, dtype=np.int64)
    patch_ids[1:] = np.cumsum(mask)
    return extended[:-1], extended[1:], patch_ids


class WindowSampler:
    """Draws random training windows that start at patch starts, weighted by document size."""

    def __init__(self, docs: Sequence[PatchedDocument], seq_len: int, seed: int) -> None:
        self.docs = list(docs)
        self.seq_len = seq_len
        self.starts = [d.patch_starts for d in self.docs]
        sizes = np.array([len(s) for s in self.starts], dtype=np.float64)
        self.doc_weights = sizes / sizes.sum()
        self.rng = np.random.default_rng(seed)

    def batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        doc_ids = self.rng.choice(len(self.docs), size=batch_size, p=self.doc_weights)
        rows = []
        for doc_id in doc_ids:
            starts = self.starts[doc_id]
            start = int(starts[self.rng.integers(len(starts))])
            rows.append(make_window(self.docs[doc_id], start, self.seq_len))
        return stack_windows(rows)


def stack_windows(rows: Sequence[tuple[np.ndarray, ...]]) -> dict[str, torch.Tensor]:
    byte_ids, targets, patch_ids = (np.stack(column) for column in zip(*rows, strict=True))
    return {"byte_ids": torch.from_numpy(byte_ids), "targets": torch.from_numpy(targets),
            "patch_ids": torch.from_numpy(patch_ids)}


def eval_windows(docs: Sequence[PatchedDocument], seq_len: int) -> list[tuple[np.ndarray, ...]]:
    """Cover every byte of every document exactly once with windows that start at patch starts.

    A window scores the bytes up to the last patch start it reaches; the next window begins
    there. Each window restarts at BOS, so its first bytes have less context than in one
    continuous stream and bits per byte measured this way is a slight overestimate.
    """
    windows = []
    for doc in docs:
        n = len(doc.data)
        starts = doc.patch_starts
        position = 0
        while position < n:
            limit = position + seq_len
            if limit >= n:
                following = n + 1  # score the rest of the document and its EOS
            else:
                later = starts[(starts > position) & (starts <= limit)]
                following = int(later[-1]) if len(later) else limit
            byte_ids, targets, patch_ids = make_window(doc, position, seq_len)
            targets = targets.copy()
            targets[following - position:] = PAD_ID
            windows.append((byte_ids, targets, patch_ids))
            position = following
    return windows
