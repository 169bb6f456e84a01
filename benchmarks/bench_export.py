"""Export figures: bundle sizes, export time, parity, and decode time per byte on one thread.

    python benchmarks/bench_export.py [--checkpoint DIR] [--eval-text FILE] [--bytes N]

Exports the checkpoint with elr-export into a temporary directory. The checkpoint is
models/default when present, else an untrained default-size model with fixed patching.
Then times byte-by-byte decoding of held-out text through the same step loop three ways:
PyTorch eager, onnxruntime fp32 and onnxruntime int8, each on one thread. Decoding is
teacher-forced, so every backend sees the same bytes and patch boundaries. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from elr_export import export_cli, parity
from elr_export.checkpoint import load_checkpoint, save_checkpoint
from elr_export.config import ModelConfig
from elr_export.model import ELRModel
from elr_export.onnx_export import example_inputs, graph_module, input_names
from elr_runtime.graph_io import GRAPH_NAMES, graph_filename

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "default"
DEFAULT_TEXT = REPO_ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
N_LATENT_STEPS = 4


class TorchGraphSession:
    """A PyTorch graph module behind onnxruntime's `run` interface, for OnnxStepper."""

    def __init__(self, module: torch.nn.Module, model: ELRModel, graph: str) -> None:
        self.module = module
        self.names = input_names(model, graph)

    @torch.no_grad()
    def run(self, output_names: Sequence[str] | None,
            feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        inputs = [torch.from_numpy(feeds[name]) for name in self.names]
        return [t.numpy() for t in self.module(*inputs)]


def held_out_bytes(path: Path, n_bytes: int) -> bytes:
    """Return `n_bytes` from the start of the last 10 % of `path`, the usual validation split."""
    data = path.read_bytes()
    return data[len(data) * 9 // 10:][:n_bytes]


def untrained_checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    path = directory / "untrained"
    save_checkpoint(path, ELRModel(ModelConfig(patching="fixed")), None, None)
    return path


def graph_call_ms(sessions: Mapping[str, Mapping[str, object]], model: ELRModel,
                  calls: int = 100, repeats: int = 7) -> dict[str, dict[str, float]]:
    """Time one call of each step graph per precision, batch 1 with 100 cached positions.

    Inputs are one new byte for the encoder and decoder and a 4-byte patch for the global
    step. Returns the best of `repeats` runs of `calls` calls, in ms per call, keyed by
    graph and then precision; the precisions alternate, as in `compare_decode_times`.
    """
    generator = torch.Generator().manual_seed(0)
    timings: dict[str, dict[str, float]] = {}
    for graph, new_length in (("encoder_step", 1), ("decoder_step", 1), ("global_step", 4)):
        feeds = {name: t.numpy() for name, t in
                 example_inputs(model, graph, 1, new_length, 100, generator).items()}
        best = dict.fromkeys(sessions, float("inf"))
        for _ in range(repeats + 1):  # the first round warms the sessions up
            for precision, graphs in sessions.items():
                start = time.perf_counter()
                for _ in range(calls):
                    graphs[graph].run(None, feeds)  # type: ignore[attr-defined]
                best[precision] = min(best[precision],
                                      (time.perf_counter() - start) * 1000.0 / calls)
        timings[graph] = best
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint directory (default: models/default, else an untrained "
                             "default-size model)")
    parser.add_argument("--eval-text", type=Path, default=DEFAULT_TEXT,
                        help="text file whose last 10 %% is the held-out text")
    parser.add_argument("--bytes", type=int, default=256, help="bytes decoded per timing run")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.is_dir() else \
                untrained_checkpoint(work)
        eval_text = work / "held_out.txt"
        eval_text.write_bytes(held_out_bytes(args.eval_text, export_cli.DEFAULT_EVAL_BYTES))

        # export, timed end to end (load, export, checks, quantization, gate, write)
        options = export_cli.ExportOptions(
            checkpoint=checkpoint, out=work / "bundle", n_latent_steps=N_LATENT_STEPS,
            eval_text=eval_text, exporter=args.exporter, keep_failed_int8=True)
        start = time.perf_counter()
        result = export_cli.run_export(options, export_cli.Progress(
            export_cli.count_steps(options), stream=sys.stderr))
        export_s = time.perf_counter() - start

        # decode time per byte, one thread each
        ckpt = load_checkpoint(checkpoint)
        rule = ckpt.patch_rule()
        data = eval_text.read_bytes()
        backends = {
            "PyTorch eager": {
                g: TorchGraphSession(graph_module(ckpt.model, g, N_LATENT_STEPS), ckpt.model, g)
                for g in GRAPH_NAMES},
            "onnxruntime fp32": parity.open_sessions(
                {g: result.out / graph_filename(g, "fp32") for g in GRAPH_NAMES}),
            "onnxruntime int8": parity.open_sessions(
                {g: result.out / graph_filename(g, "int8") for g in GRAPH_NAMES}),
        }
        steppers = {name: parity.OnnxStepper(sessions, ckpt.config)  # type: ignore[arg-type]
                    for name, sessions in backends.items()}
        timings = parity.compare_decode_times(steppers, data, rule, args.bytes, repeats=5)
        calls = graph_call_ms({"fp32": backends["onnxruntime fp32"],
                               "int8": backends["onnxruntime int8"]}, ckpt.model)

    manifest = result.manifest
    sizes = {p: sum(result.sizes[graph_filename(g, p)] for g in GRAPH_NAMES)
             for p in ("fp32", "int8")}
    figures = manifest["parity"]
    gate = figures["int8_gate"]
    worst = max(figures["graphs"].values(), key=lambda f: f["max_abs_diff"])
    print(f"checkpoint: {checkpoint} ({ckpt.model.n_params() / 1e6:.2f} M parameters, "
          f"{ckpt.config.patching} patching), exporter {args.exporter}")
    print("| figure | value |")
    print("|---|---|")
    print(f"| graphs fp32 | {sizes['fp32'] / 1e6:.2f} MB |")
    print(f"| graphs int8 | {sizes['int8'] / 1e6:.2f} MB ({sizes['int8'] / sizes['fp32']:.2f}x) |")
    print(f"| export time | {export_s:.1f} s |")
    print(f"| fp32 max abs diff vs PyTorch | {worst['max_abs_diff']:.1e} (tolerance "
          f"{figures['fp32_tolerance']:g}) |")
    print(f"| bits per byte fp32 / int8 | {figures['fp32']['bpb']:.4f} / "
          f"{figures['int8']['bpb']:.4f} ({gate['bpb_increase']:+.2%}) |")
    print(f"| int8 top-1 agreement | {gate['top1_agreement']:.2%} |")
    for name, ms in timings.items():
        print(f"| decode, {name}, 1 thread | {ms:.3f} ms/byte |")
    for graph, ms in calls.items():
        print(f"| one {graph} call, fp32 / int8, 1 thread | {ms['fp32']:.3f} / "
              f"{ms['int8']:.3f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
