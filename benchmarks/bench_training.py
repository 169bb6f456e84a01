"""Entropy patching against the byte-level and fixed-4 baselines at the same training budget.

    python benchmarks/bench_training.py [--data FILE] [--budget-s 1800] [--out runs/bench-training]

Trains the three patching schemes of the default model size side by side (one process each,
started together), each for the same budget of CPU time, so a scheme that waits for a core is
not charged for the wait. Then scores each checkpoint on the held-out last 10 % of the data
with elr-eval and prints bits per byte, estimated FLOPs per byte and the ratios to the
byte-level baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
SCHEMES = ("entropy", "fixed", "byte")


def train_command(data: Path, out: Path, scheme: str, budget_s: float, threads: int,
                  patch_length: float) -> list[str]:
    return [sys.executable, "-m", "elr_export.train_cli", str(data), "--out", str(out),
            "--patching", scheme, "--fixed-patch-length", "4", "--time-budget-s", str(budget_s),
            "--budget-clock", "cpu", "--target-patch-length", str(patch_length),
            "--max-steps", "1000000", "--seq-len", "256", "--dropout", "0.3",
            "--eval-interval", "1000000", "--checkpoint-interval", "1000000",
            "--threads", str(threads)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="training text file")
    parser.add_argument("--budget-s", type=float, default=1800.0,
                        help="CPU seconds of training per scheme (all run at once)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "bench-training",
                        help="directory for the three checkpoints; must not exist")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--target-patch-length", type=float, default=5.5,
                        help="mean patch length the entropy threshold is calibrated to")
    args = parser.parse_args()
    if args.out.exists():
        print(f"bench_training: {args.out} exists: remove it or pass another --out",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True)

    # the held-out part: the same last 10 % that elr-train keeps for validation
    data = args.data.read_bytes()
    heldout = args.out / "heldout.txt"
    heldout.write_bytes(data[len(data) - int(round(len(data) * 0.1)):])

    # train the three schemes at once
    started = time.perf_counter()
    procs = {}
    for scheme in SCHEMES:
        log = (args.out / f"{scheme}.log").open("w")
        procs[scheme] = subprocess.Popen(
            train_command(args.data, args.out / scheme, scheme, args.budget_s, args.threads,
                          args.target_patch_length),
            stdout=log, stderr=subprocess.STDOUT)
    failed = [s for s, p in procs.items() if p.wait() != 0]
    if failed:
        print(f"bench_training: training failed for {failed}: see {args.out}/<scheme>.log",
              file=sys.stderr)
        return 1
    wall_s = time.perf_counter() - started

    # score every checkpoint on the held-out text
    results = {}
    for scheme in SCHEMES:
        out = subprocess.run([sys.executable, "-m", "elr_export.evaluate",
                              str(args.out / scheme), str(heldout), "--json"],
                             capture_output=True, text=True, check=True)
        state = json.loads((args.out / scheme / "config.json").read_text())["training"]["run"]
        results[scheme] = {**json.loads(out.stdout), "steps": state["step"],
                           "train_bytes_seen": state["bytes_seen"]}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    base = results["byte"]
    print(f"{args.data.name}, {args.budget_s / 60:.0f} CPU minutes of training per scheme, "
          f"{wall_s / 60:.1f} min wall in all")
    print("| patching | held-out bpb | bpb vs byte | FLOPs/byte (est.) | FLOPs vs byte "
          "| mean patch length | steps | bytes trained |")
    print("|---|---|---|---|---|---|---|---|")
    for scheme in SCHEMES:
        r = results[scheme]
        print(f"| {scheme} | {r['bits_per_byte']:.3f} "
              f"| {r['bits_per_byte'] / base['bits_per_byte']:.3f}x "
              f"| {r['flops_per_byte'] / 1e6:.2f} M "
              f"| {r['flops_per_byte'] / base['flops_per_byte']:.3f}x "
              f"| {r['mean_patch_length']:.2f} | {r['steps']} | {r['train_bytes_seen']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
