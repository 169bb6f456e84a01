"""Record what the runtime computes on this platform, for comparison with another platform.

`record` runs the runtime (never torch) on a bundle and a corpus that another platform
prepared, and writes into one directory:

- record.json: the platform (machine, byte order, Python, numpy and onnxruntime versions,
  the compiled patcher's file name), the greedy bytes of every case, and the stdout of
  elr-run for each precision;
- arrays.npz: entropies and patch boundaries of sample texts under the bundle's table and
  under a table built here, and the logits of every decoding step. The steps are
  teacher-forced along the greedy bytes of a reference record, or of this one when there is
  no reference, so two platforms are compared on the same inputs even after their greedy
  bytes part;
- table_built.elrt: a frequency table built here from the corpus, for the other platform
  to read.

    python tools/arm64/crosscheck.py record --inputs DIR --out DIR [--reference DIR]
    python tools/arm64/crosscheck.py compare REFERENCE_DIR RECORD_DIR

The --inputs directory contains `bundle/` and `corpus.txt` (see make_inputs.py). The tests in
test_crosscheck.py check two records against the tolerances; `compare` prints the measured
differences.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import platform
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

# Greedy cases: a prompt from the training text, answered plainly and after latent
# reasoning (which runs the latent_loop graph). Under qemu a decoding step of the tiny model
# takes about 0.1 s, so the continuations stay short.
PROMPT = b"ROMEO:\nWhat light"
MAX_BYTES = 32
CASES = ("plain", "reason")
# Bytes of the corpus tail and of random bytes that the patcher checks read.
SAMPLE_BYTES = 4096
RANDOM_SEED = 20261204
SAMPLE_TEXT_NAMES = ("corpus_tail", "utf8", "random", "empty")
TABLE_CONTEXT_LENGTH = 4
RECORD_NAME = "record.json"
ARRAYS_NAME = "arrays.npz"
TABLE_BUILT_NAME = "table_built.elrt"


def sample_texts(corpus: bytes) -> dict[str, bytes]:
    """Return the texts whose entropies and patches are compared, by name."""
    # numpy's PCG64 stream is the same on every platform for the same seed
    rng = np.random.default_rng(RANDOM_SEED)
    return {
        "corpus_tail": corpus[-SAMPLE_BYTES:],
        "utf8": "Grüße aus Köln: naïve café, 日本語のテキスト, Ελληνικά, emoji 🙂.\n".encode()
        * 8,
        "random": rng.integers(0, 256, SAMPLE_BYTES, dtype=np.uint8).tobytes(),
        "empty": b"",
    }


def platform_facts() -> dict[str, Any]:
    """Return the facts about this interpreter that decide binary compatibility."""
    import onnxruntime

    from elr_runtime import _patcher

    return {
        "machine": platform.machine(),
        "byteorder": sys.byteorder,
        "pointer_bits": 8 * struct.calcsize("P"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "patcher_file": Path(_patcher.__file__).name,
        "extension_suffixes": importlib.machinery.EXTENSION_SUFFIXES,
    }


def patcher_arrays(bundle_dir: Path, corpus: bytes, out_dir: Path) -> dict[str, np.ndarray]:
    """Return entropies and boundaries of the sample texts; save the table built here."""
    from elr_runtime.bundle import load_bundle
    from elr_runtime.patcher import FrequencyTable, Patcher, TableBuilder

    bundle = load_bundle(bundle_dir)
    if bundle.table_path is None or bundle.patcher_settings is None:
        raise ValueError(f"bundle {bundle_dir} does not use entropy patching, so it has no "
                         "frequency table to compare: export an entropy-patched checkpoint")
    bundle_table = FrequencyTable.load(str(bundle.table_path))
    builder = TableBuilder(context_length=TABLE_CONTEXT_LENGTH)
    builder.add_document(corpus)
    built_table = builder.finalize()
    built_table.save(str(out_dir / TABLE_BUILT_NAME))

    arrays: dict[str, np.ndarray] = {}
    for table_name, table in (("bundle_table", bundle_table), ("built_table", built_table)):
        patcher = Patcher.from_settings(table, dict(bundle.patcher_settings))
        for text_name, text in sample_texts(corpus).items():
            prefix = f"{table_name}/{text_name}"
            arrays[f"{prefix}/entropies"] = np.asarray(table.entropies(text), dtype=np.float32)
            arrays[f"{prefix}/start_mask"] = np.asarray(patcher.patch_start_mask(text),
                                                        dtype=bool)
            arrays[f"{prefix}/patch_lengths"] = np.asarray(patcher.patch_lengths(text),
                                                           dtype=np.int32)
            arrays[f"{prefix}/incremental_mask"] = incremental_mask(patcher, text)
    return arrays


def incremental_mask(patcher: Any, text: bytes) -> np.ndarray:
    """Return the patch starts of `text` decided one byte at a time, as while generating."""
    stream = patcher.incremental()
    starts = np.zeros(len(text), dtype=bool)
    for index, byte in enumerate(text):
        starts[index] = stream.next_starts_patch()
        stream.push(byte)
    return starts


def greedy_bytes(generator: Any, case: str) -> bytes:
    """Return the greedy continuation of PROMPT from the runtime's Generator."""
    from elr_runtime.sampling import SamplingSettings

    return generator.generate(PROMPT, SamplingSettings(temperature=0.0), max_bytes=MAX_BYTES,
                              reason=case == "reason")


def forced_logits(generator: Any, case: str, continuation: bytes) -> np.ndarray:
    """Return the logits before each byte of `continuation` and after the last one.

    The ids are those of Generator: BOS, the prompt, BOT and EOT when reasoning, then the
    continuation one byte per step, so row i contains the scores of continuation byte i.
    """
    from elr_runtime.graph_io import BOS_ID, BOT_ID, EOT_ID

    runner = generator.runner
    runner.reset()
    ids = [BOS_ID, *PROMPT, *((BOT_ID, EOT_ID) if case == "reason" else ())]
    rows = [runner.prefill(ids)]
    for byte in continuation:
        rows.append(runner.step(byte))
    return np.stack(rows).astype(np.float32)


def elr_run_stdout(bundle_dir: Path, precision: str) -> bytes:
    """Run the elr-run command greedily and return its raw stdout."""
    command = Path(sys.executable).with_name("elr-run")
    env = dict(os.environ, SKBUILD_EDITABLE_VERBOSE="0")  # a host editable install prints
    result = subprocess.run(
        [str(command), str(bundle_dir), "--prompt", PROMPT.decode(), "--max-bytes",
         str(MAX_BYTES), "--precision", precision, "--raw"],
        capture_output=True, env=env, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"elr-run exited with status {result.returncode}: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def record(inputs: Path, out_dir: Path, reference: Path | None = None) -> dict[str, Any]:
    """Write record.json, arrays.npz and table_built.elrt for this platform into `out_dir`."""
    from elr_runtime.generate import Generator

    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_dir = inputs / "bundle"
    corpus = (inputs / "corpus.txt").read_bytes()
    reference_greedy = None
    if reference is not None:
        reference_greedy = json.loads((reference / RECORD_NAME).read_text())["greedy"]

    arrays = patcher_arrays(bundle_dir, corpus, out_dir)
    greedy: dict[str, dict[str, str]] = {}
    elr_run: dict[str, str] = {}
    for precision in ("fp32", "int8"):
        generator = Generator(bundle_dir, precision=precision)
        greedy[precision] = {}
        for case in CASES:
            generated = greedy_bytes(generator, case)
            greedy[precision][case] = generated.hex()
            forced_along = generated
            if reference_greedy is not None:
                forced_along = bytes.fromhex(reference_greedy[precision][case])
            arrays[f"logits/{precision}/{case}"] = forced_logits(generator, case, forced_along)
        elr_run[precision] = elr_run_stdout(bundle_dir, precision).hex()

    result = {"platform": platform_facts(), "prompt": PROMPT.hex(), "max_bytes": MAX_BYTES,
              "greedy": greedy, "elr_run_stdout": elr_run}
    np.savez(out_dir / ARRAYS_NAME, **arrays)
    (out_dir / RECORD_NAME).write_text(json.dumps(result, indent=2) + "\n")
    return result


def compare(reference: Path, observed: Path) -> list[str]:
    """Return one line per compared quantity: max logit differences and equality of the rest."""
    with np.load(reference / ARRAYS_NAME) as loaded:
        reference_arrays = dict(loaded)
    with np.load(observed / ARRAYS_NAME) as loaded:
        observed_arrays = dict(loaded)
    lines = []
    for key in sorted(reference_arrays):
        if key.startswith("logits/"):
            difference = float(np.abs(observed_arrays[key] - reference_arrays[key]).max())
            lines.append(f"{key}: max abs difference {difference:.2g} over "
                         f"{reference_arrays[key].size} scores")
    patcher_keys = [key for key in reference_arrays if not key.startswith("logits/")]
    unequal = [key for key in patcher_keys
               if not np.array_equal(observed_arrays[key], reference_arrays[key])]
    lines.append(f"patcher: {len(patcher_keys) - len(unequal)} of {len(patcher_keys)} "
                 "entropy and boundary arrays bitwise equal")
    reference_record = json.loads((reference / RECORD_NAME).read_text())
    observed_record = json.loads((observed / RECORD_NAME).read_text())
    for precision in ("fp32", "int8"):
        same_greedy = observed_record["greedy"][precision] == reference_record["greedy"][precision]
        same_stdout = (observed_record["elr_run_stdout"][precision]
                       == reference_record["elr_run_stdout"][precision])
        lines.append(f"{precision}: greedy bytes {'equal' if same_greedy else 'DIFFERENT'}, "
                     f"elr-run stdout {'equal' if same_stdout else 'DIFFERENT'}")
    same_table = ((reference / TABLE_BUILT_NAME).read_bytes()
                  == (observed / TABLE_BUILT_NAME).read_bytes())
    lines.append("table built from the corpus: file bytes "
                 + ("equal" if same_table else "DIFFERENT"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    record_parser = commands.add_parser("record", help="record this platform's results")
    record_parser.add_argument("--inputs", type=Path, required=True,
                               help="directory with bundle/ and corpus.txt")
    record_parser.add_argument("--out", type=Path, required=True,
                               help="directory to write the record")
    record_parser.add_argument("--reference", type=Path,
                               help="record of another platform whose greedy bytes the "
                                    "logits follow")
    compare_parser = commands.add_parser("compare", help="print the differences of two records")
    compare_parser.add_argument("reference", type=Path)
    compare_parser.add_argument("observed", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        result = record(args.inputs, args.out, args.reference)
        print(json.dumps(result["platform"], indent=2))
    else:
        print("\n".join(compare(args.reference, args.observed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
