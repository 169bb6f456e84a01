"""Compare the runtime on this platform with a record made on another platform.

Needs no torch, so it runs in the arm64 root filesystem of `make test-arm64`. Set

- ELR_CROSS_INPUTS: directory with `bundle/` and `corpus.txt` (made by make_inputs.py);
- ELR_CROSS_REFERENCE: a record directory written by crosscheck.py on the other platform;
- ELR_CROSS_OUT: where this platform's record goes (default: a temporary directory).

Tolerances: fp32 logits agree within 1e-4 and the greedy bytes are equal. int8 logits agree
within INT8_LOGIT_TOLERANCE. The int8 greedy bytes are equal up to the first near tie: a
step whose top two scores on the reference lie closer than twice that tolerance. From there
on, a legitimate difference between the platforms' int8 kernels may pick the other byte.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crosscheck  # noqa: E402

FP32_LOGIT_TOLERANCE = 1e-4
# Dynamic int8 quantizes activations on every call. The platforms' fp32 kernels sum in
# different orders, and a one-ulp difference before quantization can move a uint8 code by
# one step, which shifts the logits by about one quantization step times the weights. The
# tolerance allows many such steps but stays far below the logits' own scale (1 to 10), so a
# wrong kernel still fails. Measured on the tiny model of make_inputs.py between x86-64 with
# AVX-512 VNNI and emulated Cortex-A72 and A76 (onnxruntime 1.32.0): 3.8e-6.
INT8_LOGIT_TOLERANCE = 2e-2


def _environment_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: these tests run from tools/arm64/test-arm64.sh")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"{name}={value} is not a directory")
    return path


@pytest.fixture(scope="session")
def inputs() -> Path:
    return _environment_path("ELR_CROSS_INPUTS")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _environment_path("ELR_CROSS_REFERENCE")


@pytest.fixture(scope="session")
def reference(reference_dir: Path) -> dict[str, Any]:
    return json.loads((reference_dir / crosscheck.RECORD_NAME).read_text())


@pytest.fixture(scope="session")
def reference_arrays(reference_dir: Path) -> dict[str, np.ndarray]:
    with np.load(reference_dir / crosscheck.ARRAYS_NAME) as arrays:
        return dict(arrays)


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    value = os.environ.get("ELR_CROSS_OUT")
    return Path(value) if value else tmp_path_factory.mktemp("record")


@pytest.fixture(scope="session")
def observed(inputs: Path, out_dir: Path, reference_dir: Path) -> dict[str, Any]:
    return crosscheck.record(inputs, out_dir, reference_dir)


@pytest.fixture(scope="session")
def observed_arrays(observed: dict[str, Any], out_dir: Path) -> dict[str, np.ndarray]:
    with np.load(out_dir / crosscheck.ARRAYS_NAME) as arrays:
        return dict(arrays)


# -- platform and build ---------------------------------------------------------------------


def test_runtime_imports_without_torch():
    code = ("import sys, elr_runtime.cli, elr_runtime.generate, elr_runtime.patcher; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_patcher_extension_matches_interpreter():
    from elr_runtime import _patcher

    path = Path(_patcher.__file__)
    assert path.name.endswith(importlib.machinery.EXTENSION_SUFFIXES[0])
    assert _elf_machine(path) == _elf_machine(Path(sys.executable).resolve())


def _elf_machine(path: Path) -> int:
    """Return the e_machine field of an ELF file (62 x86-64, 183 aarch64)."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    byteorder = "little" if header[5] == 1 else "big"
    return int.from_bytes(header[18:20], byteorder)


def test_cli_rejects_32_bit_userland():
    from elr_runtime.cli import platform_problem

    assert platform_problem() is None
    message = platform_problem(pointer_bytes=4, machine="armv7l")
    assert message is not None
    assert "64-bit" in message


# -- frequency table and patcher ------------------------------------------------------------


@pytest.mark.parametrize("table", ["bundle_table", "built_table"])
@pytest.mark.parametrize("text", crosscheck.SAMPLE_TEXT_NAMES)
def test_patcher_matches_reference(table: str, text: str, observed_arrays, reference_arrays):
    for field in ("entropies", "start_mask", "patch_lengths", "incremental_mask"):
        key = f"{table}/{text}/{field}"
        np.testing.assert_array_equal(observed_arrays[key], reference_arrays[key],
                                      err_msg=f"{key} differs from the reference platform")


def test_incremental_patcher_matches_batch(observed_arrays):
    for key in observed_arrays:
        if key.endswith("/incremental_mask"):
            batch_key = key.replace("/incremental_mask", "/start_mask")
            np.testing.assert_array_equal(observed_arrays[key], observed_arrays[batch_key],
                                          err_msg=key)


def test_built_table_bytes_match_reference(observed, out_dir: Path, reference_dir: Path):
    observed_image = (out_dir / crosscheck.TABLE_BUILT_NAME).read_bytes()
    reference_image = (reference_dir / crosscheck.TABLE_BUILT_NAME).read_bytes()
    assert len(observed_image) == len(reference_image)
    assert observed_image == reference_image


def test_reference_table_reads_here(observed, out_dir: Path, reference_dir: Path,
                                    inputs: Path):
    from elr_runtime.patcher import FrequencyTable

    corpus = (inputs / "corpus.txt").read_bytes()
    built_here = FrequencyTable.load(str(out_dir / crosscheck.TABLE_BUILT_NAME))
    built_there = FrequencyTable.load(str(reference_dir / crosscheck.TABLE_BUILT_NAME))
    assert built_there.context_length == built_here.context_length
    assert built_there.n_contexts == built_here.n_contexts
    for name, text in crosscheck.sample_texts(corpus).items():
        np.testing.assert_array_equal(built_there.entropies(text), built_here.entropies(text),
                                      err_msg=name)


def test_corrupt_table_rejected(inputs: Path):
    from elr_runtime.patcher import FrequencyTable

    image = bytearray((inputs / "bundle" / "frequency_table.elrt").read_bytes())
    image[len(image) // 2] ^= 0x01
    with pytest.raises(ValueError, match="checksum"):
        FrequencyTable.from_bytes(bytes(image))


# -- bundle and generation ------------------------------------------------------------------


def test_bundle_loads_with_both_precisions(inputs: Path):
    from elr_runtime.bundle import load_bundle
    from elr_runtime.session import open_sessions

    bundle = load_bundle(inputs / "bundle")
    assert bundle.precisions == ("fp32", "int8")
    assert bundle.table_path is not None
    for precision in bundle.precisions:
        assert set(open_sessions(bundle, precision)) == {"encoder_step", "global_step",
                                                         "latent_loop", "decoder_step"}


@pytest.mark.parametrize("case", crosscheck.CASES)
def test_fp32_logits_match_reference(case: str, observed_arrays, reference_arrays):
    key = f"logits/fp32/{case}"
    difference = np.abs(observed_arrays[key] - reference_arrays[key]).max()
    assert difference <= FP32_LOGIT_TOLERANCE, f"{key}: max abs difference {difference:.3g}"


@pytest.mark.parametrize("case", crosscheck.CASES)
def test_fp32_greedy_matches_reference(case: str, observed, reference):
    observed_bytes = bytes.fromhex(observed["greedy"]["fp32"][case])
    reference_bytes = bytes.fromhex(reference["greedy"]["fp32"][case])
    assert observed_bytes == reference_bytes


def test_fp32_elr_run_matches_reference(observed, reference):
    observed_stdout = bytes.fromhex(observed["elr_run_stdout"]["fp32"])
    reference_stdout = bytes.fromhex(reference["elr_run_stdout"]["fp32"])
    assert observed_stdout == reference_stdout
    assert observed_stdout == bytes.fromhex(reference["greedy"]["fp32"]["plain"])


@pytest.mark.parametrize("case", crosscheck.CASES)
def test_int8_logits_match_reference(case: str, observed_arrays, reference_arrays):
    key = f"logits/int8/{case}"
    difference = np.abs(observed_arrays[key] - reference_arrays[key]).max()
    assert difference <= INT8_LOGIT_TOLERANCE, f"{key}: max abs difference {difference:.3g}"


@pytest.mark.parametrize("case", crosscheck.CASES)
def test_int8_greedy_matches_until_near_tie(case: str, observed, reference, reference_arrays):
    observed_bytes = bytes.fromhex(observed["greedy"]["int8"][case])
    reference_bytes = bytes.fromhex(reference["greedy"]["int8"][case])
    comparable = _steps_before_near_tie(reference_arrays[f"logits/int8/{case}"],
                                        2 * INT8_LOGIT_TOLERANCE)
    assert observed_bytes[:comparable] == reference_bytes[:comparable]


def test_int8_elr_run_matches_reference(observed, reference, reference_arrays):
    observed_stdout = bytes.fromhex(observed["elr_run_stdout"]["int8"])
    reference_stdout = bytes.fromhex(reference["elr_run_stdout"]["int8"])
    comparable = _steps_before_near_tie(reference_arrays["logits/int8/plain"],
                                        2 * INT8_LOGIT_TOLERANCE)
    assert observed_stdout[:comparable] == reference_stdout[:comparable]


def _steps_before_near_tie(logits: np.ndarray, margin: float) -> int:
    """Return how many leading steps have a top-two score gap of at least `margin`.

    Only byte values and EOS can be chosen, so the other special ids are left out.
    """
    choosable = np.concatenate([logits[:, :256], logits[:, 257:258]], axis=1)
    top_two = np.sort(choosable, axis=1)[:, -2:]
    gaps = top_two[:, 1] - top_two[:, 0]
    close = np.flatnonzero(gaps < margin)
    return int(close[0]) if close.size else len(gaps)
