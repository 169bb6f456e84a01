"""elr-export: turn a training checkpoint into a model bundle for the on-device runtime.

    elr-export runs/small --out bundles/small --latent-steps 4 --eval-text held_out.txt

Exports the four step graphs with the latent loop unrolled to --latent-steps, checks every
graph and the whole decoding loop against PyTorch, quantizes to int8 and measures int8
against fp32 on the held-out text, then writes the bundle atomically. Progress goes to
stderr and the summary to stdout; bad input ends with a one-line error and exit status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import onnx
import onnxruntime as ort
import torch

from elr_export import parity
from elr_export.bundle import (
    BundleError,
    build_manifest,
    check_target,
    commit_bundle,
    create_staging,
    discard_staging,
    write_manifest,
)
from elr_export.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from elr_export.config import ModelConfig
from elr_export.model import ELRModel
from elr_export.onnx_export import (
    DEFAULT_EXPORTER,
    DEFAULT_OPSET,
    EXPORTERS,
    MIN_OPSET,
    export_graph,
)
from elr_export.quantize import QuantizationSettings, quantize_graph
from elr_runtime.cli import silence_stdout
from elr_runtime.graph_io import GRAPH_NAMES, TABLE_NAME, graph_filename
from elr_runtime.patching import PatchRule

logger = logging.getLogger(__name__)

# Each latent step unrolls one more copy of the global layers into the latent loop graph,
# so graph size and export time grow linearly; 64 is far above any curriculum's step count.
MAX_LATENT_STEPS = 64
# Latent steps exported when neither --latent-steps nor the checkpoint gives a count.
DEFAULT_LATENT_STEPS = 4
# Fewer bytes than this measure top-1 agreement in steps coarser than 0.4 %, too coarse for
# a 97 % gate.
MIN_EVAL_BYTES = 256
DEFAULT_EVAL_BYTES = 4096
# Bytes of text run through the whole loop in both ONNX and PyTorch, and bytes generated
# greedily by both; PyTorch's reference generation recomputes the full sequence per byte.
LOOP_CHECK_BYTES = 512
GREEDY_CHECK_BYTES = 64
# Text for the loop check when no --eval-text is given.
_SAMPLE_TEXT = (b"A byte-level model reads text as raw UTF-8 bytes: caf\xc3\xa9, na\xc3\xafve, "
                b"\xe6\x97\xa5\xe6\x9c\xac. It predicts one byte at a time.\n") * 4


class OptionError(Exception):
    """An invalid command-line value: exit status 2, like argparse's own usage errors."""


class ExportError(Exception):
    """An export that cannot go on; the message is one line with the fix."""


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: Path
    out: Path
    n_latent_steps: int | None
    precision: str = "both"
    opset: int = DEFAULT_OPSET
    eval_text: Path | None = None
    eval_bytes: int = DEFAULT_EVAL_BYTES
    keep_failed_int8: bool = False
    exporter: str = DEFAULT_EXPORTER
    quantization: QuantizationSettings = field(default_factory=QuantizationSettings)

    @property
    def precisions(self) -> tuple[str, ...]:
        return ("fp32", "int8") if self.precision == "both" else (self.precision,)


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    sizes: dict[str, int]
    seconds: float
    warnings: list[str]


class Progress:
    """Numbered progress lines on stderr, one per step, with the step's duration."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.index = 0
        self.stream = stream if stream is not None else sys.stderr

    @contextmanager
    def step(self, title: str) -> Iterator[dict[str, str]]:
        """Print "[i/n] title ..." and, when the step ends, its duration and any note.

        The caller may set note["text"] to a short result shown after the duration.
        """
        self.index += 1
        self.stream.write(f"[{self.index}/{self.total}] {title} ...")
        self.stream.flush()
        note: dict[str, str] = {}
        start = time.perf_counter()
        try:
            yield note
        except BaseException:
            self.stream.write(" failed\n")
            self.stream.flush()
            raise
        seconds = time.perf_counter() - start
        detail = f": {note['text']}" if note.get("text") else ""
        self.stream.write(f" {seconds:.1f} s{detail}\n")
        self.stream.flush()


# -- input checks -----------------------------------------------------------------------------


def check_options(options: ExportOptions) -> None:
    """Raise OptionError or BundleError for option values that no checkpoint can fix."""
    check_target(options.out)
    n = options.n_latent_steps
    if n is not None and not 1 <= n <= MAX_LATENT_STEPS:
        raise OptionError(f"--latent-steps {n} is out of range: use 1 to {MAX_LATENT_STEPS}")
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= options.opset <= max_opset:
        raise OptionError(f"--opset {options.opset} is not supported: use {MIN_OPSET} to "
                          f"{max_opset}")
    if options.eval_bytes < MIN_EVAL_BYTES:
        raise OptionError(f"--eval-bytes {options.eval_bytes} is too small: use at least "
                          f"{MIN_EVAL_BYTES}")
    if "int8" in options.precisions and options.eval_text is None:
        raise OptionError(f"--precision {options.precision} needs --eval-text FILE: int8 is "
                          "checked against fp32 on held-out text")


def read_eval_text(path: Path, max_bytes: int) -> bytes:
    """Read the first `max_bytes` bytes of `path`; raise ExportError if it is unusable."""
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes)
    except FileNotFoundError as err:
        raise ExportError(f"--eval-text {path} not found: pass a held-out text file") from err
    except IsADirectoryError as err:
        raise ExportError(f"--eval-text {path} is a directory: pass a text file") from err
    except OSError as err:
        raise ExportError(f"--eval-text {path} cannot be read ({err.strerror})") from err
    if len(data) < MIN_EVAL_BYTES:
        raise ExportError(f"--eval-text {path} has {len(data)} bytes, at least "
                          f"{MIN_EVAL_BYTES} are needed: pass a longer held-out text")
    return data


def resolve_latent_steps(requested: int | None,
                         training_state: dict[str, Any]) -> tuple[int, str | None]:
    """Return the latent step count to export and a warning when it is a fallback.

    The count is --latent-steps, else the "n_latent_steps" of the checkpoint's training
    state, else DEFAULT_LATENT_STEPS.
    """
    if requested is not None:
        return requested, None
    trained = training_state.get("n_latent_steps")
    if isinstance(trained, int) and 1 <= trained <= MAX_LATENT_STEPS:
        return trained, None
    return DEFAULT_LATENT_STEPS, (f"the checkpoint records no n_latent_steps, so the latent loop "
                                  f"runs {DEFAULT_LATENT_STEPS} steps: pass --latent-steps N to "
                                  "choose")


# -- the export -------------------------------------------------------------------------------


def count_steps(options: ExportOptions) -> int:
    steps = 1 + len(GRAPH_NAMES) + 2 + 1  # load, export, graph and loop checks, write
    if "int8" in options.precisions:
        steps += 1
    if options.eval_text is not None:
        steps += 1
    return steps


def run_export(options: ExportOptions, progress: Progress | None = None) -> ExportResult:
    """Export, check and write a bundle; raise ExportError, CheckpointError or BundleError."""
    check_options(options)
    eval_data = (read_eval_text(options.eval_text, options.eval_bytes)
                 if options.eval_text is not None else None)
    progress = progress or Progress(count_steps(options))
    started = time.perf_counter()

    with progress.step(f"load checkpoint {options.checkpoint}") as note:
        checkpoint = load_checkpoint(options.checkpoint)
        n_latent_steps, latent_warning = resolve_latent_steps(options.n_latent_steps,
                                                              checkpoint.training_state)
        rule = checkpoint.patch_rule()
        model = checkpoint.model.eval()
        note["text"] = f"{model.n_params() / 1e6:.2f} M parameters, {rule.mode} patching"

    staging = create_staging(options.out)
    try:
        manifest, warnings = _export_into(staging, options, checkpoint, n_latent_steps, rule,
                                          eval_data, progress)
        if latent_warning is not None:
            warnings.insert(0, latent_warning)
        with progress.step(f"write bundle {options.out}"):
            manifest = write_manifest(staging, manifest)
            sizes = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
            commit_bundle(staging, options.out)
    except BaseException:
        discard_staging(staging)
        raise
    return ExportResult(options.out, manifest, sizes, time.perf_counter() - started, warnings)


def _export_into(staging: Path, options: ExportOptions, checkpoint: Checkpoint,
                 n_latent_steps: int, rule: PatchRule, eval_data: bytes | None,
                 progress: Progress) -> tuple[dict[str, Any], list[str]]:
    """Write graphs and table into `staging`; return the manifest draft and warnings."""
    model = checkpoint.model
    warnings: list[str] = []

    # fp32 graphs, each checked against PyTorch, then the whole decoding loop
    fp32_paths = {}
    for graph in GRAPH_NAMES:
        with progress.step(f"export {graph}"):
            fp32_paths[graph] = staging / graph_filename(graph, "fp32")
            export_graph(model, graph, fp32_paths[graph], options.opset, n_latent_steps,
                         options.exporter)
    fp32_sessions = parity.open_sessions(fp32_paths)
    parity_section = _check_graphs(model, fp32_sessions, n_latent_steps, progress)
    parity_section["loop"] = _check_loop(model, fp32_sessions, rule, eval_data, progress)

    # int8 graphs
    quantization = None
    int8_paths: dict[str, Path] = {}
    if "int8" in options.precisions:
        int8_paths = {g: staging / graph_filename(g, "int8") for g in GRAPH_NAMES}
        quantization = _quantize(fp32_paths, int8_paths, options.quantization, progress)

    # held-out text: bits per byte, top-1 agreement and decode time
    text_parity: dict[str, Any] = {"fp32": None, "int8": None, "int8_gate": None}
    if eval_data is not None:
        text_parity = _measure_text(model.config, fp32_sessions, int8_paths, eval_data, rule,
                                    progress)
        if text_parity["int8_gate"] is not None:
            warnings += _int8_warnings(text_parity, options.keep_failed_int8)

    # drop fp32 graphs the bundle does not ship, add the table
    if "fp32" not in options.precisions:
        for path in fp32_paths.values():
            path.unlink()
    if checkpoint.table is not None:
        shutil.copyfile(Path(checkpoint.path) / TABLE_NAME, staging / TABLE_NAME)

    parity_section.update(text_parity)
    parity_section["eval_text"] = None if eval_data is None else {
        "name": options.eval_text.name if options.eval_text else None,
        "bytes": len(eval_data),
        "sha256": hashlib.sha256(eval_data).hexdigest(),
    }
    parity_section["timing_threads"] = 1
    manifest = build_manifest(
        model.config, checkpoint.patcher_settings, checkpoint.table is not None,
        n_latent_steps, options.precisions, quantization, parity_section, options.opset)
    manifest["export"] = {"exporter": options.exporter, "torch": torch.__version__,
                          "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    return manifest, warnings


def _check_graphs(model: ELRModel, sessions: dict[str, ort.InferenceSession],
                  n_latent_steps: int, progress: Progress) -> dict[str, Any]:
    """Check names, latent step count and outputs of every fp32 graph against PyTorch."""
    with progress.step("check fp32 graphs against PyTorch") as note:
        try:
            parity.check_io_names(sessions, model)
            latent_steps_in_graph = parity.check_latent_count(sessions, model.config,
                                                              n_latent_steps)
        except ValueError as err:
            raise ExportError(str(err)) from err
        results = parity.check_all_graphs(model, sessions, n_latent_steps)
        worst = max(results.values(), key=lambda r: r.max_abs_diff)
        note["text"] = f"max abs diff {worst.max_abs_diff:.1e} ({worst.graph})"
        if not worst.passed:
            raise ExportError(f"fp32 {worst.graph} differs from PyTorch by "
                              f"{worst.max_abs_diff:.2e} > {parity.FP32_TOLERANCE:g} at "
                              f"{worst.worst_case}: the export is wrong, report it")
    return {
        "fp32_tolerance": parity.FP32_TOLERANCE,
        "graphs": parity.graph_parity_dict(results),
        "latent_steps_in_graph": latent_steps_in_graph,
    }


def _check_loop(model: ELRModel, sessions: dict[str, ort.InferenceSession], rule: PatchRule,
                eval_data: bytes | None, progress: Progress) -> dict[str, Any]:
    """Compare logits over a text and greedy bytes of the ONNX loop with PyTorch."""
    with progress.step("check the decoding loop against PyTorch") as note:
        loop_text = (eval_data or _SAMPLE_TEXT)[:LOOP_CHECK_BYTES]
        loop_diff = parity.check_sequence(model, sessions, rule, loop_text)
        from_graphs, from_torch = parity.check_greedy(model, sessions, rule, loop_text[:32],
                                                      GREEDY_CHECK_BYTES)
        note["text"] = (f"logits max abs diff {loop_diff:.1e}, greedy "
                        f"{'equal' if from_graphs == from_torch else 'DIFFERENT'}")
        if not loop_diff <= parity.FP32_TOLERANCE:
            raise ExportError(f"fp32 decoding loop logits differ from PyTorch by {loop_diff:.2e}"
                              f" > {parity.FP32_TOLERANCE:g}: the export is wrong, report it")
        if from_graphs != from_torch:
            raise ExportError(f"greedy generation through ONNX gives {from_graphs[:16]!r}..., "
                              f"PyTorch gives {from_torch[:16]!r}...: the export is wrong, "
                              "report it")
    return {"bytes": len(loop_text), "max_abs_diff": float(f"{loop_diff:.3g}"),
            "greedy_bytes": len(from_torch), "greedy_equal": True}


def _quantize(fp32_paths: dict[str, Path], int8_paths: dict[str, Path],
              settings: QuantizationSettings, progress: Progress) -> dict[str, Any]:
    """Quantize every graph; return the manifest's quantization section."""
    with progress.step("quantize to int8") as note:
        reports = {g: quantize_graph(fp32_paths[g], int8_paths[g], settings)
                   for g in GRAPH_NAMES}
        fp32_bytes = sum(p.stat().st_size for p in fp32_paths.values())
        int8_bytes = sum(p.stat().st_size for p in int8_paths.values())
        note["text"] = f"{int8_bytes / fp32_bytes:.2f}x the fp32 size"
    section = settings.to_dict()
    section["quantized_nodes"] = {g: len(r.quantized_nodes) for g, r in reports.items()}
    section["fp32_weight_nodes"] = {g: list(r.fp32_nodes) for g, r in reports.items()}
    return section


def _measure_text(config: ModelConfig, fp32_sessions: dict[str, ort.InferenceSession],
                  int8_paths: dict[str, Path], eval_data: bytes, rule: PatchRule,
                  progress: Progress) -> dict[str, Any]:
    """Measure bits per byte and decode time of each precision, and the int8 gate."""
    text_parity: dict[str, Any] = {"fp32": None, "int8": None, "int8_gate": None}
    with progress.step(f"measure on {len(eval_data)} bytes of held-out text") as note:
        sessions = {"fp32": fp32_sessions}
        if int8_paths:
            sessions["int8"] = parity.open_sessions(int8_paths)
        results = {precision: parity.measure_text(s, config, eval_data, rule)
                   for precision, s in sessions.items()}
        timings = parity.compare_decode_times(
            {p: parity.OnnxStepper(s, config) for p, s in sessions.items()}, eval_data, rule)
        for precision, result in results.items():
            result.decode_ms_per_byte = timings[precision]
            text_parity[precision] = result.to_dict()
        note["text"] = f"fp32 {results['fp32'].bpb:.3f} bpb"
        if "int8" in results:
            gate = parity.int8_gate(results["fp32"], results["int8"], len(eval_data))
            text_parity["int8_gate"] = gate
            note["text"] += (f", int8 {results['int8'].bpb:.3f} bpb, top-1 agreement "
                             f"{gate['top1_agreement']:.1%}")
    return text_parity


def _int8_warnings(text_parity: dict[str, Any], keep_failed_int8: bool) -> list[str]:
    """Raise ExportError if int8 misses the gate (unless kept); return warnings to show."""
    gate = text_parity["int8_gate"]
    warnings = []
    if not gate["passed"]:
        detail = (f"bits per byte {gate['bpb_increase']:+.1%} (limit "
                  f"+{gate['max_bpb_increase']:.0%}), top-1 agreement "
                  f"{gate['top1_agreement']:.1%} (minimum {gate['min_top1_agreement']:.0%})")
        if not keep_failed_int8:
            raise ExportError(f"int8 graphs miss the accuracy gate: {detail}; nothing was "
                              "written. Use --precision fp32, or --keep-failed-int8 to write "
                              "them anyway")
        warnings.append(f"int8 graphs miss the accuracy gate ({detail}); kept because of "
                        "--keep-failed-int8")
    if not gate["faster_than_fp32"]:
        warnings.append(f"int8 is not faster than fp32 on this machine "
                        f"({text_parity['int8']['decode_ms_per_byte']:.3f} vs "
                        f"{text_parity['fp32']['decode_ms_per_byte']:.3f} ms per byte)")
    return warnings


# -- command line -----------------------------------------------------------------------------


def format_summary(result: ExportResult) -> str:
    """Return the multi-line summary printed after a successful export."""
    manifest = result.manifest
    parity = manifest["parity"]
    lines = [f"bundle {result.out} written in {result.seconds:.1f} s "
             f"({manifest['n_latent_steps']} latent steps, opset {manifest['opset']})"]

    # files and sizes
    lines.append("files:")
    for name, size in result.sizes.items():
        lines.append(f"  {name:<28} {size / 1e6:9.3f} MB")
    totals = {}
    for precision in ("fp32", "int8"):
        names = [f for files in manifest["graphs"].values() for p, f in files.items()
                 if p == precision]
        if names:
            totals[precision] = sum(result.sizes[n] for n in names)
    size_line = ", ".join(f"{p} graphs {b / 1e6:.3f} MB" for p, b in totals.items())
    if len(totals) == 2:
        size_line += f" (int8 is {totals['int8'] / totals['fp32']:.2f}x fp32)"
    lines.append(f"  {size_line}")

    # parity
    lines.append(f"parity with PyTorch (fp32, max abs difference, tolerance "
                 f"{parity['fp32_tolerance']:g}):")
    for graph, figures in parity["graphs"].items():
        lines.append(f"  {graph:<14} {figures['max_abs_diff']:.1e} over {figures['cases']} "
                     "cases")
    loop = parity["loop"]
    lines.append(f"  decoding loop  {loop['max_abs_diff']:.1e} over {loop['bytes']} bytes, "
                 f"greedy {loop['greedy_bytes']} bytes equal")
    if parity["fp32"] is not None:
        text = parity["eval_text"]
        lines.append(f"held-out text {text['name']} ({text['bytes']} bytes, 1 thread):")
        fp32 = parity["fp32"]
        lines.append(f"  fp32  {fp32['bpb']:.4f} bits per byte, "
                     f"{fp32['decode_ms_per_byte']:.3f} ms per byte")
        if parity["int8"] is not None:
            int8, gate = parity["int8"], parity["int8_gate"]
            speedup = fp32["decode_ms_per_byte"] / int8["decode_ms_per_byte"]
            lines.append(f"  int8  {int8['bpb']:.4f} bits per byte "
                         f"({gate['bpb_increase']:+.2%}), {int8['decode_ms_per_byte']:.3f} "
                         f"ms per byte ({speedup:.2f}x the fp32 speed)")
            lines.append(f"  int8  top-1 agreement with fp32 {gate['top1_agreement']:.2%}; "
                         f"gate {'passed' if gate['passed'] else 'FAILED'}")
    lines.extend(f"NOTE: {w}" for w in result.warnings)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elr-export",
        description="Export a checkpoint to a model bundle: ONNX graphs (fp32 and int8), the "
                    "frequency table and a manifest with parity figures.")
    parser.add_argument("checkpoint", type=Path,
                        help="checkpoint directory written by elr-train (config.json, "
                             "model.safetensors, and frequency_table.elrt for entropy patching)")
    parser.add_argument("--out", type=Path, required=True, metavar="BUNDLE_DIR",
                        help="bundle directory to write; it may be missing, empty or an existing "
                             "bundle, which is replaced only when the new one is complete")

    # what to export
    parser.add_argument("--latent-steps", type=int, default=None, dest="n_latent_steps",
                        metavar="N",
                        help=f"latent reasoning steps unrolled into the latent loop graph, 1 to "
                             f"{MAX_LATENT_STEPS} (default: the count recorded in the checkpoint, "
                             f"else {DEFAULT_LATENT_STEPS})")
    parser.add_argument("--precision", choices=("fp32", "int8", "both"), default="both",
                        help="graph precisions to ship (default: both)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                        help=f"ONNX opset version, at least {MIN_OPSET} (default: "
                             f"{DEFAULT_OPSET})")
    parser.add_argument("--exporter", choices=EXPORTERS, default=DEFAULT_EXPORTER,
                        help="torch.onnx exporter: dynamo (torch.export-based, the default) or "
                             "torchscript (legacy and deprecated, but much faster to run)")

    # checks
    parser.add_argument("--eval-text", type=Path, default=None, metavar="FILE",
                        help="held-out text file on which int8 is measured against fp32 (bits "
                             "per byte, top-1 agreement, decode time); required for int8")
    parser.add_argument("--eval-bytes", type=int, default=DEFAULT_EVAL_BYTES, metavar="N",
                        help=f"bytes of --eval-text to use, at least {MIN_EVAL_BYTES} (default: "
                             f"{DEFAULT_EVAL_BYTES})")
    parser.add_argument("--keep-failed-int8", action="store_true",
                        help="write the bundle even when int8 misses the accuracy gate (bits "
                             "per byte more than 2 %% above fp32 or top-1 agreement below 97 %%)")
    parser.add_argument("--verbose", action="store_true", help="log each step's details")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    options = ExportOptions(
        checkpoint=args.checkpoint, out=args.out, n_latent_steps=args.n_latent_steps,
        precision=args.precision, opset=args.opset, eval_text=args.eval_text,
        eval_bytes=args.eval_bytes, keep_failed_int8=args.keep_failed_int8,
        exporter=args.exporter)

    try:
        result = run_export(options)
    except OptionError as err:
        print(f"elr-export: error: {err}", file=sys.stderr)
        return 2
    except (ExportError, BundleError, CheckpointError) as err:
        print(f"elr-export: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"elr-export: interrupted; {options.out} was not changed", file=sys.stderr)
        return 130
    try:
        print(format_summary(result), flush=True)
    except BrokenPipeError:
        # the reader closed stdout (`elr-export ... | head`): the bundle is already written
        silence_stdout()
    return 0


if __name__ == "__main__":
    sys.exit(main())
