"""Inputs of the runtime benchmark: the machine, a copy of a checkpoint, held-out text and
the exported bundle.

Everything is written under one work directory (build/bench_runtime by default) and reused
on the next run while its source has not changed, so the export runs once per checkpoint
and exporter version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO / "runs" / "default"
DEFAULT_WORK_DIR = REPO / "build" / "bench_runtime"
DEFAULT_TEXT = REPO.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"

# Files of a checkpoint that export reads; the optimizer state is not needed.
REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_FILES = ("config.json", "model.safetensors", "frequency_table.elrt")
# The runtime never runs the latent loop for plain decoding, so its length only sets the
# size of one graph file; 4 matches the exporter's examples.
N_LATENT_STEPS = 4
# Fraction of the text at its end kept out of training (the training run's val_fraction).
HELD_OUT_FRACTION = 0.1


@dataclass(frozen=True)
class Prepared:
    checkpoint: Path  # the copy the benchmark reads
    held_out: Path  # held-out text: export's eval text and the source of the prompts
    bundle: Path
    export: dict[str, Any]  # export time, exporter summary figures, source checksum


def machine_info() -> dict[str, Any]:
    """Return CPU model, core count, memory, load and software versions."""
    import numpy
    import onnxruntime

    cpu_model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def busy_processes(limit: int = 5, sample_s: float = 1.0) -> list[dict[str, Any]]:
    """Return the processes that used the most CPU over `sample_s` seconds, this one excluded.

    The benchmark records them to show what else loaded the machine.
    """
    me = os.getpid()
    procs = [p for p in psutil.process_iter(["pid", "name", "nice"]) if p.pid != me]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)  # the first call starts the measurement
    time.sleep(sample_s)
    rows = []
    for proc in procs:
        try:
            rows.append({"pid": proc.pid, "name": proc.info["name"], "nice": proc.info["nice"],
                         "cpu_percent": proc.cpu_percent(None)})
        except psutil.Error:
            continue
    rows.sort(key=lambda row: row["cpu_percent"], reverse=True)
    return [row for row in rows[:limit] if row["cpu_percent"] > 0.0]


def sha256_of_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def copy_checkpoint(source: Path, target: Path) -> str:
    """Copy the files export needs from `source` into `target`; return their sha256.

    A training run may rewrite the source at any time. The copy's checksum is therefore
    compared with the source's from before the copy, and the copy is made again once if
    they differ.
    """
    for _ in range(2):
        before = sha256_of_files([source / name for name in CHECKPOINT_FILES])
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in CHECKPOINT_FILES:
            shutil.copy2(source / name, target / name)
        after = sha256_of_files([target / name for name in CHECKPOINT_FILES])
        if after == before:
            return after
    raise RuntimeError(f"checkpoint {source} changed twice while it was copied: run the "
                       "benchmark again between two checkpoint writes")


def write_held_out(text: Path, target: Path) -> None:
    """Write the last HELD_OUT_FRACTION of `text`, the part the training run validates on."""
    data = text.read_bytes()
    cut = len(data) - int(round(len(data) * HELD_OUT_FRACTION))
    target.write_bytes(data[cut:])


def prepare(checkpoint: Path, text: Path, work_dir: Path, fresh: bool) -> Prepared:
    """Copy the checkpoint, write the held-out text and export the bundle (or reuse them)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    held_out = work_dir / "held_out.txt"
    write_held_out(text, held_out)
    ckpt_copy = work_dir / "checkpoint"
    bundle = work_dir / "bundle"
    record_path = work_dir / "export.json"

    # the export's own code is part of the key: a changed exporter exports again
    exporter_files = sorted((REPO_ROOT / "export" / "elr_export").glob("*.py"))
    exporter_files.append(REPO_ROOT / "runtime" / "elr_runtime" / "graph_io.py")
    source_sha = sha256_of_files([checkpoint / name for name in CHECKPOINT_FILES])
    exporter_sha = sha256_of_files(exporter_files)
    if not fresh and record_path.is_file() and (bundle / "manifest.json").is_file():
        record = json.loads(record_path.read_text())
        if record.get("source_sha256") == source_sha and \
                record.get("exporter_sha256") == exporter_sha:
            return Prepared(ckpt_copy, held_out, bundle, record)

    if checkpoint.resolve() == ckpt_copy.resolve():
        copied_sha = source_sha  # the copy from an earlier run, passed as --checkpoint
    else:
        copied_sha = copy_checkpoint(checkpoint, ckpt_copy)
    record = export_bundle(ckpt_copy, held_out, bundle)
    record["source_sha256"] = copied_sha
    record["exporter_sha256"] = exporter_sha
    record["source"] = str(checkpoint)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return Prepared(ckpt_copy, held_out, bundle, record)


def export_bundle(checkpoint: Path, held_out: Path, bundle: Path) -> dict[str, Any]:
    """Export `checkpoint` to `bundle` at both precisions; return the time and summary."""
    from elr_export.export_cli import ExportOptions, format_summary, run_export

    options = ExportOptions(checkpoint=checkpoint, out=bundle, n_latent_steps=N_LATENT_STEPS,
                            precision="both", eval_text=held_out)
    start = time.perf_counter()
    result = run_export(options)
    seconds = time.perf_counter() - start
    return {
        "export_s": round(seconds, 1),
        "command": f"elr-export {checkpoint} --out {bundle} --latent-steps {N_LATENT_STEPS} "
                   f"--precision both --eval-text {held_out}",
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "summary": format_summary(result),
    }


def bundle_sizes(bundle: Path) -> dict[str, int]:
    """Return the bytes of each precision's graphs, the table, and the whole directory."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    sizes: dict[str, int] = {}
    for files in manifest["graphs"].values():
        for precision, name in files.items():
            sizes[precision] = sizes.get(precision, 0) + (bundle / name).stat().st_size
    sizes["directory"] = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    table = bundle / "frequency_table.elrt"
    sizes["table"] = table.stat().st_size if table.is_file() else 0
    return sizes
