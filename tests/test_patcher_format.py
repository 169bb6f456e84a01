"""Tests of the frequency table file format: round trip, and rejection of bad files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import patcher_reference as reference
import pytest

from elr_runtime.patcher import TABLE_FORMAT_VERSION, FrequencyTable, TableBuilder

HEADER = reference.HEADER_BYTES


@pytest.fixture(scope="module")
def table() -> FrequencyTable:
    builder = TableBuilder(context_length=6)
    builder.add_document(b"abracadabra, abracadabra!\n" * 3)
    builder.add_document("ещё немного текста 🙂".encode())
    return builder.finalize()


def with_checksum(image: bytes) -> bytes:
    """Return `image` with its trailing CRC-32 recomputed, as a crafted file would have."""
    body = image[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def patched(image: bytes, offset: int, fmt: str, *values) -> bytes:
    """Return `image` with values packed at offset and a valid checksum."""
    data = bytearray(image)
    struct.pack_into(fmt, data, offset, *values)
    return with_checksum(bytes(data))


def test_round_trip_through_file(tmp_path, table):
    path = tmp_path / "table.elrt"
    table.save(path)
    loaded = FrequencyTable.load(path)
    assert loaded.to_bytes() == table.to_bytes()
    assert loaded.n_contexts_by_order == table.n_contexts_by_order
    assert not (tmp_path / "table.elrt.partial").exists()
    probe = b"abracadabra \xff\x00"
    assert np.array_equal(loaded.entropies(probe), table.entropies(probe))


def test_round_trip_through_bytes(table):
    image = table.to_bytes()
    assert FrequencyTable.from_bytes(image).to_bytes() == image
    assert FrequencyTable.from_bytes(bytearray(image)).to_bytes() == image
    assert FrequencyTable.from_bytes(np.frombuffer(image, dtype=np.uint8)).to_bytes() == image


def test_image_layout(table):
    image = table.to_bytes()
    assert image[:8] == b"ELRNGRAM"
    version, header_bytes, k, smoothing, file_bytes = struct.unpack_from("<IIIIQ", image, 8)
    assert version == TABLE_FORMAT_VERSION
    assert header_bytes == HEADER
    assert k == 6
    assert smoothing == reference.SMOOTHING_WITTEN_BELL
    assert file_bytes == len(image)
    assert list(struct.unpack_from("<9Q", image, 32))[:7] == table.n_contexts_by_order
    assert struct.unpack_from("<I", image, len(image) - 4)[0] == zlib.crc32(image[:-4])


def test_image_parses_as_reference(table):
    image = table.to_bytes()
    assert reference.table_from_bytes(image).to_bytes() == image


def test_save_replaces_existing_file(tmp_path, table):
    path = tmp_path / "table.elrt"
    path.write_bytes(b"old content")
    table.save(str(path))
    assert path.read_bytes() == table.to_bytes()


def test_every_truncation_rejected(table):
    image = table.to_bytes()
    for size in range(len(image)):
        with pytest.raises(ValueError, match="invalid frequency table"):
            FrequencyTable.from_bytes(image[:size])


def test_trailing_bytes_rejected(table):
    with pytest.raises(ValueError, match="truncated or trailing bytes"):
        FrequencyTable.from_bytes(table.to_bytes() + b"\x00")


def test_every_bit_flip_rejected(table):
    image = table.to_bytes()
    # Every bit of the header and checksum, and a spread of payload bits.
    positions = list(range(HEADER * 8)) + list(range((len(image) - 4) * 8, len(image) * 8))
    positions += list(range(HEADER * 8, (len(image) - 4) * 8, 13))
    for bit in positions:
        corrupt = bytearray(image)
        corrupt[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ValueError, match="invalid frequency table"):
            FrequencyTable.from_bytes(bytes(corrupt))


@pytest.mark.parametrize(
    ("offset", "fmt", "values", "message"),
    [
        (8, "<I", (2,), "format version 2 is not supported"),
        (12, "<I", (64,), "header size 64 is not 104"),
        (16, "<I", (0,), "context length 0 is outside 1..8"),
        (16, "<I", (9,), "context length 9 is outside 1..8"),
        (20, "<I", (7,), "smoothing id 7 is unknown"),
        (32, "<Q", (2,), "lists 2 order-0 contexts"),
        (32 + 8 * 7, "<Q", (1,), "above its context length"),
        (32 + 8 * 1, "<Q", (2**63,), "more than its size allows"),
        (32 + 8 * 1, "<Q", (0,), "context counts need"),
        (HEADER, "<f", (float("nan"),), "outside \\[0, 8\\]"),
        (HEADER, "<f", (-1.0,), "outside \\[0, 8\\]"),
        (HEADER, "<f", (8.5,), "outside \\[0, 8\\]"),
    ],
    ids=[
        "version",
        "header-size",
        "context-length-0",
        "context-length-9",
        "smoothing",
        "order-0-count",
        "order-above-k",
        "huge-count",
        "count-size-mismatch",
        "nan-entropy",
        "negative-entropy",
        "entropy-above-8",
    ],
)
def test_crafted_header_rejected(table, offset, fmt, values, message):
    crafted = patched(table.to_bytes(), offset, fmt, *values)
    with pytest.raises(ValueError, match=message):
        FrequencyTable.from_bytes(crafted)


def test_unsorted_contexts_rejected():
    builder = TableBuilder(context_length=1)
    builder.add_document(b"abcabc")
    image = bytearray(builder.finalize().to_bytes())
    # Order-1 records follow the order-0 entropy: swap the keys of the first two.
    first = HEADER + 4
    second = first + 5
    image[first], image[second] = image[second], image[first]
    with pytest.raises(ValueError, match="not sorted by key without repeats"):
        FrequencyTable.from_bytes(with_checksum(bytes(image)))


def test_colliding_keys_rejected():
    # Keys k * C = base + i (mod 2**64) share the high 32 bits that Fibonacci hashing uses, so
    # all land on one home slot.
    multiplier = 0x9E3779B97F4A7C15
    inverse = pow(multiplier, -1, 2**64)
    base = 0x1234567800000000
    keys = sorted(((base + i) * inverse) % 2**64 for i in range(1100))
    crafted = reference.ReferenceTable(8, 1.0, {(8, key): 1.0 for key in keys})
    with pytest.raises(ValueError, match="too many context keys that hash to nearby slots"):
        FrequencyTable.from_bytes(crafted.to_bytes())


def test_bad_magic_rejected(table):
    crafted = b"NOTATABL" + table.to_bytes()[8:]
    with pytest.raises(ValueError, match="not a frequency table file"):
        FrequencyTable.from_bytes(crafted)


def test_oversized_data_rejected(tmp_path, table):
    image = table.to_bytes()
    with pytest.raises(ValueError, match="above the limit"):
        FrequencyTable.from_bytes(image, max_bytes=len(image) - 1)
    path = tmp_path / "table.elrt"
    table.save(path)
    with pytest.raises(ValueError, match="above the limit"):
        FrequencyTable.load(path, max_bytes=100)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        FrequencyTable.load(tmp_path / "missing.elrt")


def test_directory_raises_os_error(tmp_path):
    with pytest.raises(OSError):
        FrequencyTable.load(tmp_path)


def test_save_into_missing_directory_raises(tmp_path, table):
    with pytest.raises(FileNotFoundError):
        table.save(tmp_path / "missing" / "table.elrt")
