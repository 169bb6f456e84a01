"""Benchmark of the C++ entropy patcher: training, calibration and patching throughput.

Run from the repository root (``make bench`` runs every benchmark):

    .venv/bin/python benchmarks/bench_patcher.py

For tinyshakespeare and enwiki_shortened it trains a table on the whole file (one document),
calibrates the global threshold to a target mean patch length on the same file, and reports
the table size. It then times patching of enwiki_shortened on one thread, and the pure-Python
reference of the tests on a slice of it, in the same run. Throughput is reported from wall
time and from the thread's CPU time: on a shared machine the CPU figure is the one that does
not depend on what else runs. Results are printed as Markdown rows for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

import patcher_reference as reference  # noqa: E402

from elr_runtime.patcher import Patcher, TableBuilder, calibrate_threshold  # noqa: E402

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "text"
TRAINING_FILES = ("tinyshakespeare.txt", "enwiki_shortened.xml")
PATCHING_FILE = "enwiki_shortened.xml"

logger = logging.getLogger("bench_patcher")


def timed(function: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Return the best wall time and best thread CPU time over `repeats` calls, in seconds."""
    best_wall = best_cpu = float("inf")
    result = None
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.thread_time()
        result = function()
        best_cpu = min(best_cpu, time.thread_time() - cpu_start)
        best_wall = min(best_wall, time.perf_counter() - wall_start)
    return best_wall, best_cpu, result


def megabytes_per_s(n_bytes: int, seconds: float) -> float:
    return n_bytes / seconds / 1e6


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def train(data: bytes, context_length: int) -> TableBuilder:
    builder = TableBuilder(context_length=context_length)
    builder.add_document(data)
    return builder


def main(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    if not (data_dir / PATCHING_FILE).is_file():
        print(f"error: {data_dir / PATCHING_FILE} not found; pass --data-dir", file=sys.stderr)
        return 1

    print(
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    print(
        f"settings: context_length={args.context_length}, "
        f"target mean patch length {args.target}, max_patch_length={args.max_patch_length}"
    )
    print()

    # Training, table size and calibration per corpus.
    print(
        "| corpus | MB | train MB/s (wall / CPU) | contexts | table bytes | file bytes "
        "| threshold (bits) | mean patch length |"
    )
    print("|---|---|---|---|---|---|---|---|")
    tables = {}
    for name in TRAINING_FILES:
        data = (data_dir / name).read_bytes()
        wall, cpu, builder = timed(lambda data=data: train(data, args.context_length), 1)
        finalize_wall, finalize_cpu, table = timed(builder.finalize, 1)
        wall += finalize_wall
        cpu += finalize_cpu
        threshold = calibrate_threshold(
            table, data, args.target, max_patch_length=args.max_patch_length
        )
        patcher = Patcher(table, threshold=threshold, max_patch_length=args.max_patch_length)
        mean_length = len(data) / len(patcher.patch_lengths(data))
        tables[name] = (table, patcher)
        print(
            f"| {name} | {len(data) / 1e6:.2f} | {megabytes_per_s(len(data), wall):.1f} / "
            f"{megabytes_per_s(len(data), cpu):.1f} | {table.n_contexts} | {table.size_bytes} "
            f"| {len(table.to_bytes())} | {threshold:.4f} | {mean_length:.3f} |"
        )
    print()

    # Patching throughput on one thread, and the Python reference on a slice.
    data = (data_dir / PATCHING_FILE).read_bytes()
    table, patcher = tables[PATCHING_FILE]
    print(f"| {PATCHING_FILE}, {len(data) / 1e6:.2f} MB | MB/s (wall) | MB/s (CPU) |")
    print("|---|---|---|")
    rows = {
        "Patcher.patch_lengths": lambda: patcher.patch_lengths(data),
        "Patcher.patch_start_mask": lambda: patcher.patch_start_mask(data),
        "FrequencyTable.entropies": lambda: table.entropies(data),
        "IncrementalPatcher.push_bytes": lambda: patcher.incremental().push_bytes(data),
    }
    cpu_rates = {}
    for label, function in rows.items():
        wall, cpu, _ = timed(function, args.repeats)
        cpu_rates[label] = megabytes_per_s(len(data), cpu)
        print(f"| {label} | {megabytes_per_s(len(data), wall):.1f} | {cpu_rates[label]:.1f} |")

    expected = reference.table_from_bytes(table.to_bytes())
    settings = reference.ReferenceSettings(
        threshold=patcher.threshold, max_patch_length=patcher.max_patch_length
    )
    data_slice = data[: args.reference_bytes]
    wall, cpu, mask = timed(lambda: reference.patch_start_mask(expected, data_slice, settings), 1)
    if mask != patcher.patch_start_mask(data_slice).tolist():
        print("error: the Python reference disagrees with the C++ patcher", file=sys.stderr)
        return 1
    reference_rate = megabytes_per_s(len(data_slice), cpu)
    print(
        f"| Python reference patch_start_mask (first {len(data_slice)} bytes) "
        f"| {megabytes_per_s(len(data_slice), wall):.3f} | {reference_rate:.3f} |"
    )
    print()
    speedup = cpu_rates["Patcher.patch_lengths"] / reference_rate
    print(f"patch_lengths is {speedup:.0f}x the Python reference (CPU time)")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help="directory that contains tinyshakespeare.txt and "
        "enwiki_shortened.xml (default: ../shared/data/text)",
    )
    parser.add_argument(
        "--context-length", type=int, default=4, help="context length k in bytes, 1..8 (default: 4)"
    )
    parser.add_argument(
        "--target",
        type=float,
        default=4.5,
        help="target mean patch length in bytes for calibration (default: 4.5, as in elr-train)",
    )
    parser.add_argument(
        "--max-patch-length", type=int, default=16, help="max_patch_length in bytes (default: 16)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed runs per patching call; the best is reported (default: 5)",
    )
    parser.add_argument(
        "--reference-bytes",
        type=int,
        default=200_000,
        help="bytes of the file patched by the slow Python reference (default: 200000)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(main(parse_args()))
