"""Tests of the C++ entropy patcher against the pure-Python reference, and of its Python API."""

from __future__ import annotations

import json
import pickle
import threading
from itertools import pairwise

import numpy as np
import patcher_reference as reference
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elr_runtime import patcher as patcher_module
from elr_runtime.patcher import (
    FrequencyTable,
    IncrementalPatcher,
    Patcher,
    TableBuilder,
    calibrate_threshold,
    expand_paths,
    mean_patch_length,
    patch_lengths_from_file,
    train_table_from_files,
)

PROPERTY_SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# A small alphabet makes contexts repeat, so tables have contexts of every order.
ALPHABET = b"ab \n\x00\xff\xc3\xa9"
small_documents = st.lists(
    st.binary(max_size=80).map(lambda raw: bytes(ALPHABET[b % len(ALPHABET)] for b in raw)),
    max_size=4,
)
budgets = st.sampled_from([4096 + 16, 4096 + 16 * 7, 4096 + 200, 1 << 20])
builder_budgets = st.sampled_from([1024, 2048, 4096, 1 << 20])
mixed_bytes = st.one_of(
    st.binary(max_size=120),
    st.binary(max_size=120).map(lambda raw: bytes(ALPHABET[b % len(ALPHABET)] for b in raw)),
)


@st.composite
def patcher_settings(draw) -> reference.ReferenceSettings:
    return reference.ReferenceSettings(
        threshold=draw(st.floats(min_value=-1.0, max_value=9.0)),
        relative_threshold=draw(st.floats(min_value=-3.0, max_value=3.0)),
        mode=draw(st.sampled_from(["global", "relative", "both"])),
        max_patch_length=draw(st.integers(min_value=1, max_value=12)),
        boundary_bytes=frozenset(draw(st.lists(st.sampled_from(list(ALPHABET)), max_size=3))),
    )


def build_both(documents, context_length, max_table_bytes, max_builder_bytes):
    builder = TableBuilder(context_length, max_table_bytes, max_builder_bytes)
    expected = reference.ReferenceBuilder(context_length, max_table_bytes, max_builder_bytes)
    for document in documents:
        builder.add_document(document)
        expected.add_document(document)
    return builder, builder.finalize(), expected, expected.finalize()


def make_patcher(table: FrequencyTable, s: reference.ReferenceSettings) -> Patcher:
    return Patcher(
        table,
        threshold=s.threshold,
        relative_threshold=s.relative_threshold,
        mode=s.mode,
        max_patch_length=s.max_patch_length,
        boundary_bytes=bytes(sorted(s.boundary_bytes)),
    )


@pytest.fixture(scope="module")
def text_table() -> FrequencyTable:
    builder = TableBuilder(context_length=4)
    builder.add_document(b"the cat sat on the mat. the dog sat on the log.\n" * 20)
    builder.add_document("naïve café, 日本語のテキスト 🙂\n".encode() * 10)
    return builder.finalize()


# Table training: exact equality with the reference.


@PROPERTY_SETTINGS
@given(
    documents=small_documents,
    context_length=st.integers(min_value=1, max_value=8),
    max_table_bytes=budgets,
    max_builder_bytes=builder_budgets,
    probe=mixed_bytes,
)
def test_table_equals_reference(
    documents, context_length, max_table_bytes, max_builder_bytes, probe
):
    builder, table, expected_builder, expected = build_both(
        documents, context_length, max_table_bytes, max_builder_bytes
    )
    assert builder.n_prunes == expected_builder.n_prunes
    assert table.to_bytes() == expected.to_bytes()
    expected_entropies = np.array(expected.entropies(probe), dtype=np.float32)
    assert np.array_equal(table.entropies(probe), expected_entropies)


@PROPERTY_SETTINGS
@given(
    documents=small_documents,
    context_length=st.integers(min_value=1, max_value=8),
    max_table_bytes=budgets,
)
def test_table_size_within_budget(documents, context_length, max_table_bytes):
    builder = TableBuilder(context_length, max_table_bytes)
    for document in documents:
        builder.add_document(document)
    table = builder.finalize()
    assert table.size_bytes <= max_table_bytes
    assert table.n_contexts == sum(table.n_contexts_by_order)


@PROPERTY_SETTINGS
@given(data=mixed_bytes, cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=5))
def test_streaming_add_equals_whole_document(data, cuts):
    whole = TableBuilder(context_length=3)
    whole.add_document(data)
    chunked = TableBuilder(context_length=3)
    chunked.begin_document()
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    for begin, end in pairwise(bounds):
        chunked.add(data[begin:end])
    assert chunked.finalize().to_bytes() == whole.finalize().to_bytes()
    assert chunked.n_bytes == len(data)


def test_documents_reset_context():
    split = TableBuilder(context_length=2)
    split.add_document(b"ab")
    split.add_document(b"ab")
    joined = TableBuilder(context_length=2)
    joined.add_document(b"abab")
    assert split.n_documents == 2
    assert split.finalize().n_contexts_by_order != joined.finalize().n_contexts_by_order


def test_tiny_builder_budget_prunes():
    builder = TableBuilder(context_length=4, max_builder_bytes=1024)
    builder.add_document(bytes(range(256)) * 4)
    assert builder.n_prunes > 0
    assert builder.n_pairs <= reference.builder_max_entries(1024)


def test_empty_builder_gives_uniform_table():
    table = TableBuilder(context_length=3).finalize()
    assert table.n_contexts == 1
    assert np.all(table.entropies(b"abc") == np.float32(8.0))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"context_length": 0}, "context_length must be in 1..8"),
        ({"context_length": 9}, "context_length must be in 1..8"),
        ({"max_table_bytes": 100}, "max_table_bytes must be at least"),
        ({"max_builder_bytes": 10}, "max_builder_bytes must be at least"),
    ],
)
def test_builder_rejects_invalid_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        TableBuilder(**arguments)


def test_entropies_in_bits_range(text_table):
    entropies = text_table.entropies(bytes(range(256)))
    assert entropies.dtype == np.float32
    assert entropies.shape == (256,)
    assert np.all((entropies >= 0.0) & (entropies <= 8.0))


def test_seen_context_more_certain_than_unseen(text_table):
    entropies = text_table.entropies(b"the cat sat on the m\x01\x02")
    assert entropies[20] < entropies[21]


# Boundary rules: exact equality with the reference, batch versus incremental.


@PROPERTY_SETTINGS
@given(documents=small_documents, data=mixed_bytes, s=patcher_settings())
def test_patch_start_mask_equals_reference(documents, data, s):
    _, table, _, expected = build_both(documents, 3, 1 << 20, 1 << 20)
    patcher = make_patcher(table, s)
    assert patcher.patch_start_mask(data).tolist() == reference.patch_start_mask(expected, data, s)


@PROPERTY_SETTINGS
@given(documents=small_documents, data=mixed_bytes, s=patcher_settings())
def test_patch_lengths_match_mask_and_concatenate(documents, data, s):
    _, table, _, _ = build_both(documents, 2, 1 << 20, 1 << 20)
    patcher = make_patcher(table, s)
    lengths = patcher.patch_lengths(data)
    mask = patcher.patch_start_mask(data)
    assert lengths.dtype == np.int32
    assert lengths.tolist() == reference.patch_lengths_from_mask(mask.tolist())
    assert int(lengths.sum()) == len(data)
    assert np.all(lengths <= s.max_patch_length)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    pieces = [data[begin:end] for begin, end in pairwise(offsets)]
    assert b"".join(pieces) == data


@PROPERTY_SETTINGS
@given(documents=small_documents, data=mixed_bytes, s=patcher_settings())
def test_incremental_equals_batch(documents, data, s):
    _, table, _, _ = build_both(documents, 4, 1 << 20, 1 << 20)
    patcher = make_patcher(table, s)
    incremental = patcher.incremental()
    decisions = []
    entropies = []
    for byte in data:
        decisions.append(incremental.next_starts_patch())
        entropies.append(incremental.next_entropy)
        incremental.push(byte)
    assert decisions == patcher.patch_start_mask(data).tolist()
    assert np.array_equal(np.array(entropies, dtype=np.float32), patcher.entropies(data))
    assert incremental.position == len(data)

    incremental.reset()
    assert incremental.push_bytes(data).tolist() == decisions


@PROPERTY_SETTINGS
@given(documents=small_documents, data=mixed_bytes, s=patcher_settings(), tail=mixed_bytes)
def test_start_decision_is_causal(documents, data, s, tail):
    _, table, _, _ = build_both(documents, 3, 1 << 20, 1 << 20)
    patcher = make_patcher(table, s)
    mask = patcher.patch_start_mask(data)
    extended = patcher.patch_start_mask(data + tail)
    assert extended[: len(data)].tolist() == mask.tolist()

    # The byte after data starts a patch or not whatever its value.
    after = {bool(patcher.patch_start_mask(data + bytes([value]))[-1]) for value in (0, 97, 255)}
    assert len(after) == 1
    incremental = patcher.incremental()
    incremental.push_bytes(data)
    assert incremental.next_starts_patch() == after.pop()


def test_first_byte_starts_patch(text_table):
    patcher = Patcher(text_table, threshold=100.0, max_patch_length=1000)
    assert patcher.patch_start_mask(b"x").tolist() == [True]
    assert patcher.patch_lengths(b"the cat").tolist() == [7]


# Edge cases.


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"a",
        b"ab",
        b"a" * 100,
        bytes(range(256)),
        b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x82",  # invalid UTF-8
        "日本語 🙂 naïve".encode(),
    ],
    ids=["empty", "one", "two", "repeated", "all-values", "invalid-utf8", "multibyte"],
)
@pytest.mark.parametrize("mode", ["global", "relative", "both"])
def test_edge_inputs(text_table, data, mode):
    patcher = Patcher(
        text_table, threshold=2.0, relative_threshold=0.5, mode=mode, max_patch_length=7
    )
    lengths = patcher.patch_lengths(data)
    mask = patcher.patch_start_mask(data)
    assert int(lengths.sum()) == len(data)
    assert len(mask) == len(data)
    assert len(lengths) == int(mask.sum())
    assert np.all(lengths <= 7)
    if data:
        assert mask[0]
    assert patcher.incremental().push_bytes(data).tolist() == mask.tolist()


def test_empty_input_gives_empty_arrays(text_table):
    patcher = Patcher(text_table)
    assert patcher.patch_lengths(b"").shape == (0,)
    assert patcher.patch_lengths(b"").dtype == np.int32
    assert patcher.patch_start_mask(b"").dtype == np.bool_
    assert patcher.entropies(b"").shape == (0,)


def test_run_longer_than_max_patch_length(text_table):
    patcher = Patcher(text_table, threshold=100.0, max_patch_length=4)
    assert patcher.patch_lengths(b"a" * 10).tolist() == [4, 4, 2]


def test_boundary_bytes_force_starts(text_table):
    patcher = Patcher(text_table, threshold=100.0, max_patch_length=100, boundary_bytes=b"\n")
    assert patcher.patch_lengths(b"ab\ncd\n\nx").tolist() == [3, 3, 1, 1]


def test_boundary_bytes_accept_int_list(text_table):
    from_bytes = Patcher(text_table, boundary_bytes=b"\n ")
    from_list = Patcher(text_table, boundary_bytes=[10, 32])
    assert from_bytes.boundary_bytes == from_list.boundary_bytes == b"\n "


# Input types.


@pytest.mark.parametrize(
    "convert",
    [
        bytes,
        bytearray,
        memoryview,
        lambda data: np.frombuffer(data, dtype=np.uint8),
        lambda data: memoryview(bytearray(data)).toreadonly(),
    ],
    ids=["bytes", "bytearray", "memoryview", "ndarray", "readonly-memoryview"],
)
def test_accepts_bytes_like(text_table, convert):
    data = b"the cat sat on the mat"
    patcher = Patcher(text_table)
    assert patcher.patch_lengths(convert(data)).tolist() == patcher.patch_lengths(data).tolist()
    assert np.array_equal(text_table.entropies(convert(data)), text_table.entropies(data))


def test_accepts_slice_of_larger_array(text_table):
    data = np.frombuffer(b"xxthe cat sat", dtype=np.uint8)
    patcher = Patcher(text_table)
    assert (
        patcher.patch_lengths(data[2:]).tolist() == patcher.patch_lengths(b"the cat sat").tolist()
    )


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ("text", TypeError, "encode the text first"),
        ([1, 2, 3], TypeError, "got list"),
        (np.zeros(4, dtype=np.int32), TypeError, "format 'i'"),
        (np.zeros(4, dtype=np.int8), TypeError, "must hold uint8"),
        (np.zeros(8, dtype=np.uint8)[::2], ValueError, "stride 2"),
        (np.zeros((2, 2), dtype=np.uint8), ValueError, "2 dimension"),
    ],
    ids=["str", "list", "int32", "int8", "strided", "2-d"],
)
def test_rejects_other_inputs(text_table, data, error, message):
    patcher = Patcher(text_table)
    with pytest.raises(error, match=message):
        patcher.patch_lengths(data)
    with pytest.raises(error, match=message):
        text_table.entropies(data)


# Settings.


def test_settings_round_trip_through_json(text_table):
    patcher = Patcher(
        text_table,
        threshold=2.5,
        relative_threshold=0.25,
        mode="both",
        max_patch_length=9,
        boundary_bytes=b"\n\x00",
    )
    settings_dict = json.loads(json.dumps(patcher.settings()))
    assert settings_dict == {
        "threshold": 2.5,
        "relative_threshold": 0.25,
        "mode": "both",
        "max_patch_length": 9,
        "boundary_bytes": [0, 10],
    }
    rebuilt = Patcher.from_settings(text_table, settings_dict)
    assert rebuilt.settings() == patcher.settings()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"surprise": 1}, "unknown patcher setting 'surprise'"),
        ({"mode": "sometimes"}, "mode must be 'global', 'relative' or 'both'"),
        ({"max_patch_length": 0}, "max_patch_length must be in"),
        ({"boundary_bytes": [256]}, "boundary_bytes values must be in 0..255"),
        ({"mode": "relative", "relative_threshold": None}, "needs relative_threshold"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
    ],
)
def test_from_settings_rejects_invalid(text_table, change, message):
    settings_dict = Patcher(text_table).settings() | change
    with pytest.raises(ValueError, match=message):
        Patcher.from_settings(text_table, settings_dict)


def test_from_settings_rejects_missing_key(text_table):
    settings_dict = Patcher(text_table).settings()
    del settings_dict["mode"]
    with pytest.raises(ValueError, match="missing 'mode'"):
        Patcher.from_settings(text_table, settings_dict)


def test_push_rejects_out_of_range_byte(text_table):
    incremental = Patcher(text_table).incremental()
    with pytest.raises(ValueError, match="byte must be in 0..255"):
        incremental.push(256)
    assert isinstance(incremental, IncrementalPatcher)


def test_pickle_round_trip(text_table):
    patcher = Patcher(text_table, threshold=1.5, boundary_bytes=b"\n")
    restored = pickle.loads(pickle.dumps(patcher))
    data = b"the cat sat on the mat\nthe dog"
    assert restored.patch_lengths(data).tolist() == patcher.patch_lengths(data).tolist()
    assert pickle.loads(pickle.dumps(text_table)).to_bytes() == text_table.to_bytes()


# Threads.


def test_threads_share_one_patcher(text_table):
    patcher = Patcher(text_table, threshold=1.0)
    data = np.frombuffer(("the cat sat on the mat 🙂 " * 4000).encode(), dtype=np.uint8)
    expected = patcher.patch_lengths(data)
    results = [None] * 4

    def work(index: int) -> None:
        for _ in range(5):
            results[index] = patcher.patch_lengths(data)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert np.array_equal(result, expected)


# Calibration.


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents=small_documents.filter(lambda docs: sum(map(len, docs)) > 0),
    s=patcher_settings(),
    target=st.floats(min_value=1.0, max_value=8.0),
)
def test_calibration_equals_reference(documents, s, target):
    _, table, _, expected = build_both(documents, 3, 1 << 20, 1 << 20)
    threshold = calibrate_threshold(
        table,
        documents,
        target,
        max_patch_length=s.max_patch_length,
        boundary_bytes=bytes(sorted(s.boundary_bytes)),
        mode=s.mode,
        relative_threshold=s.relative_threshold,
    )
    assert threshold == reference.calibrate_threshold(expected, documents, target, s)


def test_calibration_reaches_target(text_table):
    corpus = [b"the cat sat on the mat. the dog sat on the log.\n" * 20]
    for target in (2.0, 3.0, 5.0):
        threshold = calibrate_threshold(text_table, corpus, target, max_patch_length=32)
        patcher = Patcher(text_table, threshold=threshold, max_patch_length=32)
        assert mean_patch_length(patcher, corpus) == pytest.approx(target, rel=0.1)


@pytest.mark.parametrize(
    ("corpus", "target", "message"),
    [
        (b"abc", 0.5, "target_mean_patch_length must be"),
        ([], 2.0, "has no documents"),
        ([b""], 2.0, "corpus is empty"),
    ],
)
def test_calibration_rejects_invalid(text_table, corpus, target, message):
    with pytest.raises(ValueError, match=message):
        calibrate_threshold(text_table, corpus, target)


# File helpers.


def test_train_from_files_equals_builder(tmp_path):
    documents = [b"first file\nwith two lines\n", "второй файл 🙂".encode(), b""]
    for index, document in enumerate(documents):
        (tmp_path / f"doc{index}.txt").write_bytes(document)
    builder = TableBuilder(context_length=3)
    for document in documents:
        builder.add_document(document)
    from_glob = train_table_from_files(str(tmp_path / "*.txt"), context_length=3, chunk_bytes=5)
    from_list = train_table_from_files(
        [tmp_path / f"doc{i}.txt" for i in range(3)], context_length=3, chunk_bytes=1 << 20
    )
    assert from_glob.to_bytes() == builder.finalize().to_bytes()
    assert from_list.to_bytes() == from_glob.to_bytes()


def test_expand_paths_reports_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        expand_paths(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_paths(str(tmp_path / "*.none"))


def test_patch_lengths_from_file_equals_batch(tmp_path, text_table):
    data = ("the cat sat on the mat 🙂\n" * 300).encode()
    path = tmp_path / "text.txt"
    path.write_bytes(data)
    patcher = Patcher(text_table, threshold=1.0, boundary_bytes=b"\n")
    streamed = patch_lengths_from_file(patcher, path, chunk_bytes=777)
    assert streamed.tolist() == patcher.patch_lengths(data).tolist()
    (tmp_path / "empty.txt").write_bytes(b"")
    assert patch_lengths_from_file(patcher, tmp_path / "empty.txt").shape == (0,)


def test_module_exports_api():
    for name in patcher_module.__all__:
        assert hasattr(patcher_module, name)
