"""Streaming UTF-8: complete characters as soon as possible, U+FFFD for invalid bytes, and the
same text as decoding everything at once."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from elr_runtime.utf8 import Utf8Stream

EMOJI = "😀".encode()  # 4 bytes: f0 9f 98 80
MIXED = "日本語😀テキスト🎉漢字é".encode()


def stream_bytewise(data: bytes) -> list[str]:
    """Push `data` one byte at a time; return the output of every push, then of finish."""
    stream = Utf8Stream()
    outputs = [stream.push(data[i:i + 1]) for i in range(len(data))]
    outputs.append(stream.finish())
    return outputs


def complete_prefix(data: bytes, end: int) -> str:
    """Return the characters of data[:end] that are complete (valid UTF-8 input only)."""
    for cut in range(end, max(end - 4, 0) - 1, -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    raise AssertionError("no character boundary within 3 bytes")


def test_emoji_split_across_writes():
    outputs = stream_bytewise(EMOJI)
    assert outputs[:3] == ["", "", ""]
    assert outputs[3] == "😀"
    assert outputs[4] == ""


def test_emoji_split_in_two_writes():
    stream = Utf8Stream()
    assert stream.push(EMOJI[:2]) == ""
    assert stream.pending_bytes == 2
    assert stream.push(EMOJI[2:]) == "😀"
    assert stream.pending_bytes == 0


def test_every_split_point_of_mixed_text():
    expected = MIXED.decode("utf-8")
    for split in range(len(MIXED) + 1):
        stream = Utf8Stream()
        first = stream.push(MIXED[:split])
        second = stream.push(MIXED[split:])
        tail = stream.finish()
        # the first write returns exactly the characters completed by its bytes
        assert first == complete_prefix(MIXED, split), split
        assert first + second + tail == expected, split
        assert tail == "", split


def test_every_pair_of_split_points():
    expected = MIXED.decode("utf-8")
    for first_split in range(len(MIXED) + 1):
        for second_split in range(first_split, len(MIXED) + 1):
            stream = Utf8Stream()
            parts = [stream.push(MIXED[:first_split]),
                     stream.push(MIXED[first_split:second_split]),
                     stream.push(MIXED[second_split:]), stream.finish()]
            assert "".join(parts) == expected


def test_lone_invalid_byte_mid_stream():
    outputs = stream_bytewise(b"ab\xffcd")
    assert outputs == ["a", "b", "\ufffd", "c", "d", ""]


def test_lone_continuation_byte_mid_stream():
    outputs = stream_bytewise(b"a\x80b")
    assert outputs == ["a", "\ufffd", "b", ""]


def test_truncated_character_before_ascii():
    # the first two bytes of 日 followed by "a": one U+FFFD for the truncated sequence
    outputs = stream_bytewise(b"\xe6\x97a")
    assert "".join(outputs) == "\ufffda"
    assert outputs[:2] == ["", ""]


def test_truncated_character_at_end_of_stream():
    stream = Utf8Stream()
    assert stream.push(b"ok\xf0\x9f") == "ok"
    assert stream.finish() == "\ufffd"


def test_surrogate_encoding_is_replaced():
    data = b"x\xed\xa0\x80y"  # an encoded UTF-16 surrogate, invalid in UTF-8
    assert "".join(stream_bytewise(data)) == data.decode("utf-8", "replace")


def test_long_run_without_spaces():
    text = "長い文字列の中に空白がない😀ü" * 60
    data = text.encode()
    stream = Utf8Stream()
    emitted = []
    for end in range(1, len(data) + 1):
        emitted.append(stream.push(data[end - 1:end]))
        # every complete character is out; only the bytes of the current one wait
        assert "".join(emitted) == complete_prefix(data, end)
        assert stream.pending_bytes < 4
    assert "".join(emitted) + stream.finish() == text


def test_finish_resets_the_stream():
    stream = Utf8Stream()
    stream.push(b"\xe6")
    assert stream.finish() == "\ufffd"
    assert stream.push("é".encode()) == "é"


@given(st.binary(max_size=64), st.lists(st.integers(0, 64), max_size=6))
def test_random_bytes_and_splits(data: bytes, cuts: list[int]):
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    stream = Utf8Stream()
    streamed = "".join(stream.push(data[a:b]) for a, b in itertools.pairwise(bounds))
    streamed += stream.finish()
    assert streamed == data.decode("utf-8", "replace")
