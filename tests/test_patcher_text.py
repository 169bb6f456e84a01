"""Patching real text: English, wiki markup, Russian, Chinese and emoji.

The corpora live in shared/data/text beside the repository and are read in place. Each file is
split into a training part, a calibration part and a held-out part, so the mean patch length is
checked on text that neither the table nor the threshold has seen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from elr_runtime.patcher import (
    Patcher,
    TableBuilder,
    calibrate_threshold,
    mean_patch_length,
)

TEXT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
FILES = [
    "tinyshakespeare.txt",
    "enwiki_shortened.xml",
    "fortunes_ru.txt",
    "fortunes_zh.txt",
    "emoji_test.txt",
]
TRAIN_BYTES = 400_000
CALIBRATION_BYTES = 100_000
HELD_OUT_BYTES = 100_000
TARGET_MEAN_PATCH_LENGTH = 4.0
MAX_PATCH_LENGTH = 16

pytestmark = pytest.mark.skipif(
    not TEXT_DIR.is_dir(), reason=f"text corpora not found at {TEXT_DIR}"
)


def split(name: str) -> tuple[bytes, bytes, bytes]:
    data = (TEXT_DIR / name).read_bytes()
    end_train = min(TRAIN_BYTES, len(data) // 2)
    end_calibration = end_train + CALIBRATION_BYTES
    return (
        data[:end_train],
        data[end_train:end_calibration],
        data[end_calibration : end_calibration + HELD_OUT_BYTES],
    )


@pytest.fixture(scope="module")
def table():
    builder = TableBuilder(context_length=4)
    for name in FILES:
        builder.add_document(split(name)[0])
    return builder.finalize()


@pytest.mark.parametrize("name", FILES)
def test_held_out_mean_patch_length_near_target(table, name):
    _, calibration, held_out = split(name)
    threshold = calibrate_threshold(
        table, calibration, TARGET_MEAN_PATCH_LENGTH, max_patch_length=MAX_PATCH_LENGTH
    )
    patcher = Patcher(table, threshold=threshold, max_patch_length=MAX_PATCH_LENGTH)
    assert mean_patch_length(patcher, calibration) == pytest.approx(
        TARGET_MEAN_PATCH_LENGTH, rel=0.02
    )
    assert mean_patch_length(patcher, held_out) == pytest.approx(TARGET_MEAN_PATCH_LENGTH, rel=0.15)


@pytest.mark.parametrize("name", FILES)
def test_batch_and_incremental_agree_on_text(table, name):
    data = split(name)[2][:30_000]
    patcher = Patcher(
        table,
        threshold=3.0,
        relative_threshold=0.5,
        mode="both",
        max_patch_length=MAX_PATCH_LENGTH,
        boundary_bytes=b"\n",
    )
    mask = patcher.patch_start_mask(data)
    lengths = patcher.patch_lengths(data)
    assert patcher.incremental().push_bytes(data).tolist() == mask.tolist()
    assert int(lengths.sum()) == len(data)
    start_ids = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    assert np.flatnonzero(mask).tolist() == start_ids.tolist()


def test_one_threshold_patches_every_language(table):
    # A threshold calibrated on a mix stays within a sane range on each language.
    mix = [split(name)[1] for name in FILES]
    threshold = calibrate_threshold(
        table, mix, TARGET_MEAN_PATCH_LENGTH, max_patch_length=MAX_PATCH_LENGTH
    )
    patcher = Patcher(table, threshold=threshold, max_patch_length=MAX_PATCH_LENGTH)
    assert mean_patch_length(patcher, mix) == pytest.approx(TARGET_MEAN_PATCH_LENGTH, rel=0.02)
    for name in FILES:
        assert 1.5 <= mean_patch_length(patcher, split(name)[2]) <= MAX_PATCH_LENGTH
