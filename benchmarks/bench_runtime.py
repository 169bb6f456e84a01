"""Benchmark the on-device runtime on a default-size model against torch and a peer.

    .venv/bin/python benchmarks/bench_runtime.py            # everything (make bench runs this)
    .venv/bin/python benchmarks/bench_runtime.py --rounds 5 --skip-venv

Steps: copy the checkpoint (runs/default), export it at fp32 and int8 with elr-export, build
the peer (a byte-level Llama of the same parameter count, converted by onnxruntime-genai's
model builder), then measure side by side:

1. per-byte decode time of torch eager, the runtime at fp32 and int8, and the peer at fp32
   and int8, at 1 and 2 threads, interleaved round by round;
2. time to first byte after a 1 KB prompt;
3. peak RSS of elr-run, and the installed size of a venv with the runtime alone;
4. the share of a step spent outside onnxruntime.

The results go to stdout as a report and to WORK_DIR/results.json. The checkpoint copy, the
bundle, the peer and the runtime venv are kept in WORK_DIR and reused while their sources
are unchanged (--fresh rebuilds them). The machine may be shared, so the load average and
the busiest other processes are recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runtime_decode  # noqa: E402
import runtime_footprint  # noqa: E402
import runtime_overhead  # noqa: E402
import runtime_setup  # noqa: E402

PROMPT_BYTES = 128  # prompt before the timed decode: held-out text, several patches long
TTFB_PROMPT_BYTES = 1024
# Prefill chunks whose peak RSS is compared: the runtime's default and smaller ones.
PREFILL_CHUNKS = (256, 64, 16)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Measure the runtime's decode speed, time to first byte, memory and "
                    "install size on a default-size model, against torch eager and "
                    "onnxruntime-genai running a byte-level Llama of equal size.")
    parser.add_argument("--checkpoint", type=Path, default=runtime_setup.DEFAULT_CHECKPOINT,
                        help="checkpoint directory to copy and export (default: runs/default)")
    parser.add_argument("--text", type=Path, default=runtime_setup.DEFAULT_TEXT,
                        help="text whose last 10%% is the held-out text for prompts and the "
                             "int8 check (default: the tinyshakespeare file in ../shared)")
    parser.add_argument("--work-dir", type=Path, default=runtime_setup.DEFAULT_WORK_DIR,
                        help="directory for the bundle, the peer and the results "
                             "(default: build/bench_runtime)")
    parser.add_argument("--rounds", type=int, default=15,
                        help="timed rounds; every contender runs once per round (default 15)")
    parser.add_argument("--bytes", type=int, default=256, dest="n_bytes",
                        help="bytes generated per run (default 256)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts to measure (default: 1 2)")
    parser.add_argument("--skip-peer", action="store_true",
                        help="leave out onnxruntime-genai (needs the bench extra: "
                             "pip install -e '.[bench]')")
    parser.add_argument("--skip-venv", action="store_true",
                        help="leave out the runtime-only venv (it builds a wheel and "
                             "installs numpy and onnxruntime from the package index)")
    parser.add_argument("--fresh", action="store_true",
                        help="export, build the peer and the venv again even when cached")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or args.n_bytes < 2:
        print("bench_runtime: --rounds must be >= 1 and --bytes >= 2", file=sys.stderr)
        return 2
    if not (args.checkpoint / "config.json").is_file():
        print(f"bench_runtime: checkpoint {args.checkpoint} not found: train one with elr-train "
              "or pass --checkpoint DIR", file=sys.stderr)
        return 2
    if not args.skip_peer and not _peer_available():
        print("bench_runtime: onnxruntime-genai or transformers is not installed: run "
              "`.venv/bin/pip install -e '.[bench]'` or pass --skip-peer", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                               "machine": runtime_setup.machine_info(),
                               "busy_processes_before": runtime_setup.busy_processes()}

    # inputs: bundle and peer
    _log("preparing the bundle (export runs only when the checkpoint changed)")
    prepared = runtime_setup.prepare(args.checkpoint, args.text, args.work_dir, args.fresh)
    results["export"] = prepared.export
    results["bundle_bytes"] = runtime_setup.bundle_sizes(prepared.bundle)
    results["manifest_parity"] = json.loads(
        (prepared.bundle / "manifest.json").read_text())["parity"]
    n_params = _elr_params(prepared.checkpoint)
    results["elr_params"] = n_params
    peer = None
    if not args.skip_peer:
        import runtime_peer

        _log("preparing the onnxruntime-genai peer")
        peer = runtime_peer.prepare_peer(args.work_dir, n_params, args.fresh)
        results["peer"] = {"n_params": peer.n_params, "config": peer.config,
                           "build_s": peer.build_s,
                           "onnx_bytes": {p: _dir_bytes(d) for p, d in peer.onnx_dirs.items()}}

    held_out = prepared.held_out.read_bytes()
    prompt = held_out[:PROMPT_BYTES]

    # 1. decode time side by side
    results["decode"] = _measure_decode(args, prepared, peer, prompt)

    # 2. time to first byte after a 1 KB prompt
    _log("time to first byte")
    peer_dirs = peer.onnx_dirs if peer is not None else {}
    results["ttfb_1kb"] = runtime_footprint.time_to_first_byte(
        prepared.bundle, peer_dirs, held_out[:TTFB_PROMPT_BYTES], args.rounds)

    # 3. memory and install size
    _log("peak RSS of elr-run")
    ttfb_prompt = held_out[:TTFB_PROMPT_BYTES].decode("utf-8", errors="replace")
    results["peak_rss"] = runtime_footprint.elr_run_peak_rss(Path(sys.executable),
                                                             prepared.bundle, ttfb_prompt,
                                                             args.n_bytes)
    results["prefill_chunk_int8"] = runtime_footprint.prefill_chunk_peak_rss(
        Path(sys.executable), prepared.bundle, "int8", held_out[:TTFB_PROMPT_BYTES],
        args.n_bytes, PREFILL_CHUNKS)
    if not args.skip_venv:
        _log("runtime-only venvs (the first run builds a wheel and installs from the index)")
        wheel = runtime_footprint.build_runtime_wheel(args.work_dir, args.fresh)
        results["runtime_venv"] = {}
        for compile_bytecode in (True, False):
            venv = runtime_footprint.build_runtime_venv(args.work_dir, wheel, compile_bytecode,
                                                        args.fresh)
            # elr-run runs before the size is taken, so the .pyc files it writes are counted
            rss = runtime_footprint.elr_run_peak_rss(venv / "bin" / "python",
                                                     prepared.bundle, ttfb_prompt, args.n_bytes)
            key = "pip_default" if compile_bytecode else "pip_no_compile"
            results["runtime_venv"][key] = {**runtime_footprint.runtime_venv_size(venv),
                                            "peak_rss": rss}

    # 4. overhead outside onnxruntime
    _log("overhead outside onnxruntime")
    results["overhead"] = _measure_overhead(args, prepared, peer, prompt, results["decode"])

    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["busy_processes_after"] = runtime_setup.busy_processes()
    out = args.work_dir / "results.json"
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(format_report(results))
    print(f"\nfull results: {out}")
    return 0


def _measure_decode(args: argparse.Namespace, prepared: runtime_setup.Prepared, peer: Any,
                    prompt: bytes) -> dict[str, Any]:
    """Run all contenders at every thread count, interleaved; return summaries and ratios."""
    contenders: list[Any] = []
    for threads in args.threads:
        contenders.append(runtime_decode.TorchEagerDecoder(prepared.checkpoint, threads))
        for precision in ("fp32", "int8"):
            contenders.append(runtime_decode.RuntimeDecoder(prepared.bundle, precision,
                                                            threads))
        if peer is not None:
            for precision, model_dir in peer.onnx_dirs.items():
                contenders.append(runtime_decode.PeerDecoder(model_dir, precision, threads))

    _log(f"decode: {len(contenders)} contenders x {args.rounds} rounds x {args.n_bytes} bytes")
    load = []
    results = runtime_decode.run_interleaved(
        contenders, prompt, args.n_bytes, args.rounds,
        on_round=lambda i: load.append(os.getloadavg()[0]))
    by_key = {(r.name, r.threads): r for r in results}

    # torch eager and the runtime must generate the same greedy text
    for threads in args.threads:
        torch_text = by_key[("torch eager", threads)].runs[0].output
        fp32_text = by_key[("ELR ORT fp32", threads)].runs[0].output
        if torch_text != fp32_text:
            _log(f"WARNING: torch eager and ELR ORT fp32 generated different text at "
                 f"{threads} threads: {torch_text[:40]!r} vs {fp32_text[:40]!r}")

    ratios: dict[str, Any] = {}
    for threads in args.threads:
        elr_int8 = by_key[("ELR ORT int8", threads)]
        ratios[f"torch eager / ELR int8, {threads}t"] = runtime_decode.paired_ratio(
            by_key[("torch eager", threads)], elr_int8)
        ratios[f"torch eager / ELR fp32, {threads}t"] = runtime_decode.paired_ratio(
            by_key[("torch eager", threads)], by_key[("ELR ORT fp32", threads)])
        ratios[f"ELR fp32 / ELR int8, {threads}t"] = runtime_decode.paired_ratio(
            by_key[("ELR ORT fp32", threads)], elr_int8)
        if peer is not None:
            for precision in ("fp32", "int8"):
                ratios[f"genai {precision} / ELR {precision}, {threads}t"] = (
                    runtime_decode.paired_ratio(
                        by_key[(f"onnxruntime-genai {precision}", threads)],
                        by_key[(f"ELR ORT {precision}", threads)]))
    return {"prompt_bytes": len(prompt), "generated_bytes": args.n_bytes,
            "rounds": args.rounds, "load_average_per_round": [round(x, 2) for x in load],
            "contenders": [r.summary() for r in results], "ratios": ratios,
            "sample_output": by_key[("ELR ORT int8", args.threads[0])].runs[0].output.decode(
                "utf-8", errors="replace")}


def _measure_overhead(args: argparse.Namespace, prepared: runtime_setup.Prepared, peer: Any,
                      prompt: bytes, decode: dict[str, Any]) -> dict[str, Any]:
    """Split a decode step into Python overhead, onnxruntime dispatch and compute."""
    from elr_export.checkpoint import load_checkpoint
    from elr_export.model import estimate_flops_per_byte
    from elr_runtime.graph_io import DECODER_GRAPH, ENCODER_GRAPH, GLOBAL_GRAPH, GRAPH_NAMES

    config = load_checkpoint(prepared.checkpoint).model.config
    global_per_byte = next(row["global_steps_per_byte"] for row in decode["contenders"]
                           if row["name"] == "ELR ORT int8" and row["threads"] == 1)
    dispatch = runtime_overhead.dispatch_cost_us()
    figures: dict[str, Any] = {
        "dispatch": dispatch,
        "global_steps_per_byte": global_per_byte,
        "elr_flops_per_byte": estimate_flops_per_byte(config, 1.0 / global_per_byte),
    }
    if peer is not None:
        figures["peer_flops_per_byte"] = _peer_flops_per_token(peer, decode)
    for precision in ("fp32", "int8"):
        nodes = runtime_overhead.optimized_node_counts(
            {g: prepared.bundle / f"{g}.{precision}.onnx" for g in GRAPH_NAMES})
        nodes_per_byte = (nodes[ENCODER_GRAPH] + nodes[DECODER_GRAPH]
                          + global_per_byte * nodes[GLOBAL_GRAPH])
        calls_per_byte = 2 + global_per_byte
        gflops = runtime_overhead.matvec_gflops(config.d_global, config.mlp_ratio, precision)
        entry = {
            "session_run_timer": runtime_overhead.session_timer_share(
                prepared.bundle, precision, prompt, args.n_bytes, args.rounds),
            "optimized_nodes": nodes,
            "nodes_per_byte": round(nodes_per_byte, 1),
            "dispatch_us_per_byte": round(calls_per_byte * dispatch["run_call_us"]
                                          + nodes_per_byte * dispatch["per_node_us"], 1),
            "matvec_gflops": round(gflops, 1),
            "compute_floor_us": round(figures["elr_flops_per_byte"] / gflops / 1e3, 1),
        }
        if peer is not None:
            peer_nodes = runtime_overhead.optimized_node_counts(
                {"model": peer.onnx_dirs[precision] / "model.onnx"})["model"]
            entry["peer_nodes_per_byte"] = peer_nodes
            entry["peer_dispatch_us_per_byte"] = round(
                dispatch["run_call_us"] + peer_nodes * dispatch["per_node_us"], 1)
            entry["peer_compute_floor_us"] = round(
                figures["peer_flops_per_byte"] / gflops / 1e3, 1)
        figures[precision] = entry
    return figures


def _peer_flops_per_token(peer: Any, decode: dict[str, Any]) -> float:
    """Estimate the peer's forward FLOPs per token at the middle of the timed generation.

    2 per weight multiply (every weight but the embedding table) plus 4 * width per layer
    and attended position.
    """
    import runtime_peer

    config = peer.config
    width = config["hidden_size"]
    weights = peer.n_params - runtime_peer.BYTE_VOCAB * width
    context = decode["prompt_bytes"] + decode["generated_bytes"] / 2
    return 2.0 * weights + 4.0 * width * config["num_hidden_layers"] * context


def format_report(results: dict[str, Any]) -> str:
    """Return the results as plain-text tables."""
    machine = results["machine"]
    lines = [f"machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs, "
             f"load average {machine['load_average']} at start, "
             f"{results['load_average_after']} at the end",
             f"ELR-LRT parameters: {results['elr_params']:,}"]
    if "peer" in results:
        lines.append(f"peer Llama parameters: {results['peer']['n_params']:,}")

    decode = results["decode"]
    lines += ["", f"decode, {decode['generated_bytes']} bytes after a {decode['prompt_bytes']}-"
                  f"byte prompt, {decode['rounds']} rounds:",
              f"  {'contender':<34} {'p50 us':>9} {'p95 us':>9} {'bytes/s':>9} "
              f"{'global/byte':>11}"]
    for row in decode["contenders"]:
        label = f"{row['name']}, {row['threads']}t"
        per_byte = "" if row["global_steps_per_byte"] is None else \
            f"{row['global_steps_per_byte']:.3f}"
        lines.append(f"  {label:<34} {row['p50_us']:>9.1f} {row['p95_us']:>9.1f} "
                     f"{row['bytes_per_s']:>9.1f} {per_byte:>11}")
    lines.append("  paired ratios of the median step time of a round (median [min, max] over "
                 "rounds):")
    for name, ratio in decode["ratios"].items():
        lines.append(f"    {name:<32} {ratio['median']:.2f}x [{ratio['min']:.2f}, "
                     f"{ratio['max']:.2f}]")

    lines += ["", "time to first byte after a 1 KB prompt, 1 thread (median [min, max]):"]
    for name, row in results["ttfb_1kb"].items():
        lines.append(f"  {name:<34} {row['median_ms']:.1f} ms [{row['min_ms']:.1f}, "
                     f"{row['max_ms']:.1f}]")

    sizes = results["bundle_bytes"]
    lines += ["", f"bundle: fp32 graphs {sizes['fp32'] / 1e6:.2f} MB, int8 graphs "
                  f"{sizes['int8'] / 1e6:.2f} MB ({sizes['int8'] / sizes['fp32']:.2f}x), "
                  f"directory {sizes['directory'] / 1e6:.2f} MB",
              f"export: {results['export']['export_s']} s"]
    rss = results["peak_rss"]
    lines.append(f"elr-run peak RSS (project venv): import only {rss['import_only_mb']} MB, "
                 f"fp32 {rss['fp32']['peak_rss_mb']} MB, int8 {rss['int8']['peak_rss_mb']} MB")
    chunks = ", ".join(f"{chunk}: {row['peak_rss_mb']} MB, first byte {row['ttfb_ms']} ms"
                       for chunk, row in results["prefill_chunk_int8"].items())
    lines.append(f"int8 generation by prefill chunk (bytes per call): {chunks}")
    for key, venv in results.get("runtime_venv", {}).items():
        top = ", ".join(f"{name} {mb}" for name, mb in list(venv["distributions_mb"].items())[:5])
        lines.append(f"runtime venv ({key}): {venv['total_mb']} MB, "
                     f"{venv['without_pip_setuptools_mb']} MB without pip and setuptools, "
                     f"{venv['bytecode_mb']} MB of .pyc; largest (MB): {top}; torch installed: "
                     f"{venv['torch_installed']}, imported: {venv['torch_imported_by_runtime']}; "
                     f"elr-run peak RSS fp32 {venv['peak_rss']['fp32']['peak_rss_mb']} MB, int8 "
                     f"{venv['peak_rss']['int8']['peak_rss_mb']} MB")

    overhead = results["overhead"]
    dispatch = overhead["dispatch"]
    lines += ["", f"a decode step split up, 1 thread (onnxruntime costs "
                  f"{dispatch['run_call_us']} us per run call and {dispatch['per_node_us']} us "
                  f"per tiny node here; {overhead['elr_flops_per_byte'] / 1e6:.2f} MFLOP per "
                  "byte for ELR-LRT" +
                  (f", {overhead['peer_flops_per_byte'] / 1e6:.2f} for the peer"
                   if "peer_flops_per_byte" in overhead else "") + "):"]
    for precision in ("fp32", "int8"):
        entry = overhead[precision]
        timer = entry["session_run_timer"]
        lines.append(f"  ELR {precision}: step {timer['step_us']} us, outside session.run "
                     f"{timer['overhead_share']:.1%}; {entry['nodes_per_byte']} nodes per byte, "
                     f"dispatch estimate {entry['dispatch_us_per_byte']} us; compute floor "
                     f"{entry['compute_floor_us']} us at {entry['matvec_gflops']} GFLOP/s")
        if "peer_nodes_per_byte" in entry:
            lines.append(f"  peer {precision}: {entry['peer_nodes_per_byte']} nodes per byte, "
                         f"dispatch estimate {entry['peer_dispatch_us_per_byte']} us; compute "
                         f"floor {entry['peer_compute_floor_us']} us")
    return "\n".join(lines)


def _peer_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None
               for name in ("onnxruntime_genai", "transformers"))


def _elr_params(checkpoint: Path) -> int:
    from elr_export.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint).model.n_params()


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _log(message: str) -> None:
    print(f"[bench_runtime] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
