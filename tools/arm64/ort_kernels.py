"""Report which onnxruntime kernels run a bundle's graphs on this machine.

    python tools/arm64/ort_kernels.py BUNDLE --precision int8 --out kernels.json

Runs a prompt, the latent reasoning steps and a few greedy bytes through the runtime's step
loop with onnxruntime's profiler on, then counts, per graph, how many nodes each operator
kernel and execution provider ran. onnxruntime's profile names the operator kernel (for
example DynamicQuantizeMatMul) but not the MLAS micro-kernel inside it, which onnxruntime picks from
the CPU features. For that reason the report lists the CPU features that the kernel (or
qemu) gives this process in AT_HWCAP beside the counts.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import platform
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpuinfo import AT_HWCAP, AT_HWCAP2, feature_names  # noqa: E402

PROMPT = b"ROMEO:\nWhat light"
GENERATED_BYTES = 8


class ProfiledSession:
    """An onnxruntime session with profiling on, run as the step loop runs a GraphSession."""

    def __init__(self, path: Path, profile_dir: Path) -> None:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / path.stem)
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options,
                                            providers=["CPUExecutionProvider"])

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(feeds))

    def kernel_counts(self) -> dict[str, Any]:
        """End profiling; return the runs and, per "op_type on provider", the nodes that ran."""
        events = json.loads(Path(self.session.end_profiling()).read_text())
        nodes: dict[str, set[str]] = collections.defaultdict(set)
        runs = 0
        for event in events:
            if event.get("cat") == "Session" and event.get("name") == "model_run":
                runs += 1
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                arguments = event.get("args", {})
                kernel = f"{arguments.get('op_name')} on {arguments.get('provider')}"
                nodes[kernel].add(event["name"].removesuffix("_kernel_time"))
        return {"runs": runs,
                "nodes": {kernel: len(names) for kernel, names in sorted(nodes.items())}}


def cpu_features() -> list[str]:
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    return feature_names(libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2))


def profile_bundle(bundle_dir: Path, precision: str) -> dict[str, Any]:
    """Run the step loop with profiled sessions; return kernel counts per graph."""
    from elr_runtime.bundle import load_bundle
    from elr_runtime.graph_io import BOS_ID, BOT_ID, EOS_ID, EOT_ID, GRAPH_NAMES
    from elr_runtime.patcher import FrequencyTable
    from elr_runtime.patching import PatchRule
    from elr_runtime.runner import StepRunner
    from elr_runtime.sampling import Sampler, SamplingSettings

    bundle = load_bundle(bundle_dir)
    table = FrequencyTable.load(str(bundle.table_path)) if bundle.table_path else None
    rule = PatchRule.from_settings(bundle.model_config, table, bundle.patcher_settings)
    with tempfile.TemporaryDirectory() as profile_dir:
        sessions = {graph: ProfiledSession(bundle.graph_path(graph, precision),
                                           Path(profile_dir))
                    for graph in GRAPH_NAMES}
        runner = StepRunner(bundle, sessions, rule.incremental())
        sampler = Sampler(SamplingSettings(temperature=0.0))
        logits = runner.prefill([BOS_ID, *PROMPT, BOT_ID, EOT_ID])
        for _ in range(GENERATED_BYTES):
            next_id = sampler.next_id(logits)
            if next_id == EOS_ID:
                break
            logits = runner.step(next_id)
        kernels = {graph: session.kernel_counts() for graph, session in sessions.items()}
    return {
        "machine": platform.machine(),
        "onnxruntime": ort.__version__,
        "precision": precision,
        "cpu_features": cpu_features() if platform.machine() == "aarch64" else None,
        "kernels": kernels,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle directory written by elr-export")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="int8")
    parser.add_argument("--out", type=Path, help="JSON file to write the report to")
    args = parser.parse_args(argv)
    report = profile_bundle(args.bundle, args.precision)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
