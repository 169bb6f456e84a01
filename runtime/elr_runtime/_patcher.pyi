import os
from collections.abc import Sequence

import numpy
import numpy.typing

MAX_CONTEXT_LENGTH: int = 8

DEFAULT_MAX_TABLE_BYTES: int = 8388608

DEFAULT_MAX_BUILDER_BYTES: int = 67108864

DEFAULT_MAX_TABLE_FILE_BYTES: int = 1073741824

MIN_TABLE_BYTES: int = 4112

MIN_BUILDER_BYTES: int = 1024

TABLE_FIXED_BYTES: int = 4096

MAX_NARROW_ORDER: int = 4

NARROW_CONTEXT_BYTES: int = 16

WIDE_CONTEXT_BYTES: int = 24

BUILDER_SLOT_BYTES: int = 16

TABLE_FORMAT_VERSION: int = 1

MAX_PATCH_LENGTH_LIMIT: int = 2147483647

class FrequencyTable:
    """
    Immutable n-gram entropy model: for each stored context, the entropy in bits of the Witten-Bell smoothed next-byte distribution. Safe to share between threads.
    """

    @property
    def context_length(self) -> int:
        """Longest context k in bytes."""

    @property
    def n_contexts(self) -> int:
        """Stored contexts, counting the order-0 (empty) context."""

    @property
    def n_contexts_by_order(self) -> list[int]:
        """Stored contexts of 0, 1, ..., k bytes."""

    @property
    def size_bytes(self) -> int:
        """Memory held by the table."""

    def entropies(
        self, data: bytes | bytearray | memoryview | numpy.typing.NDArray[numpy.uint8]
    ) -> numpy.typing.NDArray[numpy.float32]:
        """
        Return float32 entropies in bits, shape (len(data),): element t predicts data[t] from data[max(0, t-k):t], as at the start of a document.
        """

    def save(self, path: str | os.PathLike) -> None:
        """
        Write the table to path (written to path + '.partial', then renamed). Raises OSError.
        """

    @staticmethod
    def load(path: str | os.PathLike, max_bytes: int = 1073741824) -> FrequencyTable:
        """
        Read and validate a table file. Raises OSError when it cannot be read and ValueError when it is invalid or larger than max_bytes.
        """

    def to_bytes(self) -> bytes:
        """Return the file image of the table."""

    @staticmethod
    def from_bytes(
        data: bytes | bytearray | memoryview | numpy.typing.NDArray[numpy.uint8],
        max_bytes: int = 1073741824,
    ) -> FrequencyTable:
        """Parse and validate a file image. Raises ValueError when it is invalid."""

    def __getstate__(self) -> bytes: ...
    def __setstate__(self, arg: bytes, /) -> None: ...
    def __repr__(self) -> str: ...

class TableBuilder:
    """
    Counts next bytes after contexts of 0..k bytes in a hash table of max_builder_bytes, pruning the rarest pairs when it fills, and finalizes a FrequencyTable of at most max_table_bytes.
    """

    def __init__(
        self,
        context_length: int = 4,
        max_table_bytes: int = 8388608,
        max_builder_bytes: int = 67108864,
    ) -> None: ...
    def begin_document(self) -> None:
        """Start a new document: the next byte added has no context."""

    def add(self, data: bytes | bytearray | memoryview | numpy.typing.NDArray[numpy.uint8]) -> None:
        """
        Count data as the continuation of the current document (chunks of a large file).
        """

    def add_document(
        self, data: bytes | bytearray | memoryview | numpy.typing.NDArray[numpy.uint8]
    ) -> None:
        """Count data as one whole document."""

    def finalize(self) -> FrequencyTable:
        """
        Return a FrequencyTable of the counts so far; the builder stays usable.
        """

    @property
    def context_length(self) -> int: ...
    @property
    def max_table_bytes(self) -> int: ...
    @property
    def max_builder_bytes(self) -> int: ...
    @property
    def n_bytes(self) -> int:
        """Bytes counted so far."""

    @property
    def n_documents(self) -> int:
        """Documents started so far."""

    @property
    def n_pairs(self) -> int:
        """Distinct (context, next byte) pairs held now."""

    @property
    def n_prunes(self) -> int:
        """Times the rarest pairs were pruned to stay within max_builder_bytes."""

class Patcher:
    """
    Splits byte strings into patches: byte 0 starts a patch, and byte t >= 1 starts one when data[t-1] is a boundary byte, the current patch has max_patch_length bytes, or the mode's entropy rule holds (global: e[t] > threshold; relative: e[t] - e[t-1] > relative_threshold; both: the two together, AND). Entropies are in bits. Immutable and safe to share between threads.
    """

    def __init__(
        self,
        table: FrequencyTable,
        threshold: float = 3.0,
        relative_threshold: float | None = None,
        mode: str = "global",
        max_patch_length: int = 16,
        boundary_bytes: bytes | Sequence[int] = b"",
    ) -> None: ...
    @staticmethod
    def from_settings(table: FrequencyTable, settings: dict) -> Patcher:
        """
        Build a patcher from the dict returned by settings(). Raises ValueError on a missing or unknown key.
        """

    def settings(self) -> dict:
        """
        Return the settings as a JSON-ready dict (boundary_bytes as a list of ints).
        """

    @property
    def table(self) -> FrequencyTable: ...
    @property
    def threshold(self) -> float: ...
    @property
    def relative_threshold(self) -> float | None: ...
    @property
    def mode(self) -> str: ...
    @property
    def max_patch_length(self) -> int: ...
    @property
    def boundary_bytes(self) -> bytes: ...
    def entropies(
        self, data: bytes | bytearray | memoryview | numpy.typing.NDArray[numpy.uint8]
    ) -> numpy.typing.NDArray[numpy.float32]:
        """Return float32 entropies in bits, as FrequencyTable.entropies."""

    def patch_lengths(
        self, data: bytes | bytearray | memoryview | numpy.typing.NDArray[numpy.uint8]
    ) -> numpy.typing.NDArray[numpy.int32]:
        """
        Return int32 patch lengths that sum to len(data); empty for empty data.
        """

    def patch_start_mask(
        self, data: bytes | bytearray | memoryview | numpy.typing.NDArray[numpy.uint8]
    ) -> numpy.typing.NDArray[numpy.bool_]:
        r"""
        Return a bool array, shape (len(data),): element t is whether data[t] starts a patch. It depends only on data[:t], so patch_start_mask(doc + b'\x00')[-1] tells whether the byte after doc starts a patch.
        """

    def incremental(self) -> IncrementalPatcher:
        """
        Return an IncrementalPatcher with these settings, at the start of a stream.
        """

    def __getstate__(self) -> tuple: ...
    def __setstate__(self, arg: tuple, /) -> None: ...
    def __repr__(self) -> str: ...

class IncrementalPatcher:
    """
    Patches a stream one byte at a time with the same decisions as Patcher.patch_start_mask. Not thread safe: use one per stream.
    """

    def next_starts_patch(self) -> bool:
        """Return whether the next byte pushed will start a patch."""

    def push(self, byte: int) -> None:
        """Append one byte (an int in 0..255) to the stream."""

    def push_bytes(
        self, data: bytes | bytearray | memoryview | numpy.typing.NDArray[numpy.uint8]
    ) -> numpy.typing.NDArray[numpy.bool_]:
        """Append bytes; return for each whether it started a patch."""

    def reset(self) -> None:
        """Start a new stream: the next byte starts a patch and has no context."""

    @property
    def next_entropy(self) -> float:
        """Entropy in bits that predicts the next byte."""

    @property
    def position(self) -> int:
        """Bytes pushed since the reset."""

    @property
    def current_patch_length(self) -> int:
        """Bytes in the patch that the last pushed byte belongs to."""

    @property
    def patcher(self) -> Patcher: ...

def _calibrate_threshold(
    table: FrequencyTable,
    documents: Sequence[object],
    target_mean_patch_length: float,
    mode: str,
    max_patch_length: int,
    boundary_bytes: object,
    relative_threshold: float | None,
) -> tuple:
    """
    Return (threshold, mean_patch_length); use elr_runtime.patcher.calibrate_threshold.
    """
