"""Entropy patcher: where one patch of bytes ends and the next begins.

This module re-exports the compiled classes of the C++ module ``elr_runtime._patcher`` and adds
corpus helpers: training a table from files or globs, and threshold calibration.

Entropies are in bits everywhere. A ``FrequencyTable`` stores, for every kept context of up to
k bytes, the entropy of the next-byte distribution smoothed with interpolated Witten-Bell and
backoff to shorter contexts. A ``Patcher`` starts a patch at byte 0 and at byte t >= 1 when

- ``data[t-1]`` is in ``boundary_bytes``, or
- the current patch already has ``max_patch_length`` bytes, or
- mode "global": ``e[t] > threshold``; mode "relative": ``e[t] - e[t-1] > relative_threshold``;
  mode "both": both conditions together (AND).

Every rule reads only bytes before t, so ``IncrementalPatcher`` makes the same decisions one
byte at a time while generating.

Example::

    builder = TableBuilder(context_length=4)
    builder.add_document(b"the cat sat on the mat")
    table = builder.finalize()
    patcher = Patcher(table, threshold=2.0, max_patch_length=8)
    patcher.patch_lengths(b"the cat")  # int32 array that sums to 7
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from elr_runtime._patcher import (
    DEFAULT_MAX_BUILDER_BYTES,
    DEFAULT_MAX_TABLE_BYTES,
    DEFAULT_MAX_TABLE_FILE_BYTES,
    MAX_CONTEXT_LENGTH,
    TABLE_FORMAT_VERSION,
    FrequencyTable,
    IncrementalPatcher,
    Patcher,
    TableBuilder,
    _calibrate_threshold,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_BUILDER_BYTES",
    "DEFAULT_MAX_TABLE_BYTES",
    "DEFAULT_MAX_TABLE_FILE_BYTES",
    "MAX_CONTEXT_LENGTH",
    "TABLE_FORMAT_VERSION",
    "FrequencyTable",
    "IncrementalPatcher",
    "Patcher",
    "TableBuilder",
    "calibrate_threshold",
    "expand_paths",
    "iter_file_chunks",
    "mean_patch_length",
    "patch_lengths_from_file",
    "train_table_from_files",
]

logger = logging.getLogger(__name__)

BytesLike = bytes | bytearray | memoryview | np.ndarray
PathLike = str | os.PathLike

# Bytes read per call while streaming a file: large enough that per-call overhead is negligible,
# small enough to keep memory flat on a small board.
DEFAULT_CHUNK_BYTES = 1 << 20

_GLOB_CHARACTERS = frozenset("*?[")


def expand_paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """Expand file paths and glob patterns into a list of files, in the order given.

    An existing path is taken as it is. Otherwise a string with ``*``, ``?`` or ``[`` is a glob
    pattern (``**`` recurses), whose matching files are taken in sorted order. Raises
    FileNotFoundError for a missing path or a pattern that matches no file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.exists():
            files.append(path)
            continue
        pattern = os.fspath(entry)
        if not _GLOB_CHARACTERS.intersection(pattern):
            raise FileNotFoundError(f"corpus file not found: '{pattern}'")
        matches = sorted(Path(match) for match in glob.glob(pattern, recursive=True))
        matches = [match for match in matches if match.is_file()]
        if not matches:
            raise FileNotFoundError(f"glob pattern '{pattern}' matches no file")
        files.extend(matches)
    return files


def iter_file_chunks(
    path: PathLike, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[memoryview]:
    """Yield the bytes of a file in chunks of at most ``chunk_bytes``.

    Each chunk is a view into one reused buffer, valid only until the next chunk is read.
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    with open(path, "rb") as file:
        while True:
            n_read = file.readinto(buffer)
            if not n_read:
                break
            yield view[:n_read]


def train_table_from_files(
    paths: PathLike | Iterable[PathLike],
    context_length: int = 4,
    max_table_bytes: int = DEFAULT_MAX_TABLE_BYTES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    max_builder_bytes: int = DEFAULT_MAX_BUILDER_BYTES,
) -> FrequencyTable:
    """Train a frequency table on files, each one document, streamed in chunks.

    ``paths`` are files or glob patterns (see ``expand_paths``). Memory stays within
    ``max_builder_bytes`` for the counts plus one chunk, whatever the corpus size.
    """
    files = expand_paths(paths)
    builder = TableBuilder(
        context_length=context_length,
        max_table_bytes=max_table_bytes,
        max_builder_bytes=max_builder_bytes,
    )
    for path in files:
        builder.begin_document()
        for chunk in iter_file_chunks(path, chunk_bytes):
            builder.add(chunk)
    table = builder.finalize()
    logger.info(
        "trained frequency table on %d files, %d bytes: %d contexts, %d bytes, %d prunes",
        len(files),
        builder.n_bytes,
        table.n_contexts,
        table.size_bytes,
        builder.n_prunes,
    )
    return table


def _documents_from_corpus(corpus: BytesLike | Sequence[BytesLike]) -> list[BytesLike]:
    """Return the corpus as a list of documents: one bytes-like object is one document."""
    if isinstance(corpus, (bytes, bytearray, memoryview, np.ndarray)):
        return [corpus]
    documents = list(corpus)
    if not documents:
        raise ValueError("the calibration corpus has no documents")
    return documents


def calibrate_threshold(
    table: FrequencyTable,
    corpus: BytesLike | Sequence[BytesLike],
    target_mean_patch_length: float,
    max_patch_length: int = 16,
    boundary_bytes: bytes | Sequence[int] = b"",
    mode: str = "global",
    relative_threshold: float | None = None,
) -> float:
    """Return the threshold, in bits, whose mean patch length on ``corpus`` is nearest the target.

    ``corpus`` is one bytes-like document or a sequence of them; each document is patched on its
    own. Mode "global" calibrates ``threshold``, mode "relative" calibrates
    ``relative_threshold``, and mode "both" calibrates ``threshold`` with the given
    ``relative_threshold`` held fixed. The result lies halfway between two neighbouring
    entropy values (or rises) seen in the corpus. A target above what ``max_patch_length`` and
    the boundary bytes allow returns the largest useful threshold, with a warning.
    """
    documents = _documents_from_corpus(corpus)
    threshold, achieved = _calibrate_threshold(
        table,
        documents,
        float(target_mean_patch_length),
        mode,
        max_patch_length,
        boundary_bytes,
        relative_threshold,
    )
    if abs(achieved - target_mean_patch_length) > 0.05 * target_mean_patch_length:
        logger.warning(
            "calibrated threshold %.6f bits gives a mean patch length of %.3f bytes, "
            "not the target %.3f (max_patch_length=%d)",
            threshold,
            achieved,
            target_mean_patch_length,
            max_patch_length,
        )
    else:
        logger.info(
            "calibrated %s threshold %.6f bits: mean patch length %.3f bytes (target %.3f)",
            mode,
            threshold,
            achieved,
            target_mean_patch_length,
        )
    return threshold


def mean_patch_length(patcher: Patcher, corpus: BytesLike | Sequence[BytesLike]) -> float:
    """Return the mean patch length in bytes over a corpus, each document patched on its own."""
    n_bytes = 0
    n_patches = 0
    for document in _documents_from_corpus(corpus):
        lengths = patcher.patch_lengths(document)
        n_bytes += int(lengths.sum(dtype=np.int64))
        n_patches += len(lengths)
    if n_patches == 0:
        raise ValueError("the corpus is empty, so it has no patches")
    return n_bytes / n_patches


def patch_lengths_from_file(
    patcher: Patcher, path: PathLike, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> np.ndarray:
    """Return the int32 patch lengths of a whole file, read in chunks (one document).

    Equal to ``patcher.patch_lengths(open(path, 'rb').read())`` without holding the file in
    memory; the result still has one int32 per patch.
    """
    incremental = patcher.incremental()
    starts = []
    offset = 0
    for chunk in iter_file_chunks(path, chunk_bytes):
        mask = incremental.push_bytes(chunk)
        starts.append(np.flatnonzero(mask).astype(np.int64) + offset)
        offset += len(chunk)
    if offset == 0:
        return np.zeros(0, dtype=np.int32)
    start_ids = np.concatenate(starts)
    return np.diff(np.append(start_ids, offset)).astype(np.int32)
