"""Figures and outputs of a profile: summary metrics, the table, JSON, CSV and the plot.

Every metric is a dict {"value", "unit", "source"}, so a figure never travels without its
origin. Energy figures carry the energy source's "measured: ..." or "estimated: ..." label.
"""

from __future__ import annotations

import csv
import datetime
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from elr_profile.energy import SourceInfo
from elr_profile.measure import ConfigResult, Settings, bundle_id
from elr_profile.sampler import PowerSampler, interpolate_power

SCHEMA = "elr-profile/1"
PERCENTILES = (50, 90, 99)
TIMER = "time.perf_counter at the caller"
CPU_TIMER = "time.process_time, user + system of all threads"

# columns of the table: metric, heading, format
_TABLE_COLUMNS = (
    ("time_to_first_byte_ms_p50", "TTFB ms", ".1f"),
    ("latency_ms_p50", "p50 ms", ".3f"),
    ("latency_ms_p90", "p90 ms", ".3f"),
    ("latency_ms_p99", "p99 ms", ".3f"),
    ("bytes_per_s", "bytes/s", ".1f"),
    ("global_steps_per_byte", "gsteps/B", ".3f"),
    ("cpu_s_per_run", "CPU s", ".3f"),
    ("cpu_percent", "CPU %", ".0f"),
    ("peak_rss_mb", "peak RSS MiB", ".1f"),
    ("energy_per_byte_mj", "mJ/byte", ".3f"),
)


def metric(value: float | None, unit: str, source: str) -> dict[str, Any]:
    if value is not None and not math.isfinite(value):
        value = None
    return {"value": value, "unit": unit, "source": source}


def summarize(result: ConfigResult, energy: SourceInfo) -> dict[str, dict[str, Any]]:
    """Return the metrics of one configuration, pooled over its runs."""
    runs = result.runs
    latencies_ms = np.concatenate([run.latencies_s for run in runs]) * 1e3
    ttfb_ms = [run.time_to_first_byte_s * 1e3 for run in runs
               if run.time_to_first_byte_s is not None]
    decode_bytes = sum(max(run.generated_bytes - 1, 0) for run in runs)
    decode_s = sum(run.decode_s for run in runs)
    generated = sum(run.generated_bytes for run in runs)
    wall_s = sum(run.wall_s for run in runs)
    cpu_s = sum(run.cpu_s for run in runs)

    metrics = {
        "time_to_first_byte_ms_p50": metric(
            float(np.median(ttfb_ms)) if ttfb_ms else None, "ms",
            f"{TIMER}, from the call to the first byte, prompt processing included"),
    }
    for percentile in PERCENTILES:
        value = float(np.percentile(latencies_ms, percentile)) if len(latencies_ms) else None
        metrics[f"latency_ms_p{percentile}"] = metric(
            value, "ms", f"{TIMER}, time between consecutive bytes")
    metrics.update({
        "bytes_per_s": metric(decode_bytes / decode_s if decode_s > 0 else None, "bytes/s",
                              "GenerationStats.decode_s, after the first byte"),
        "global_steps_per_byte": metric(
            sum(run.decode_global_steps for run in runs) / decode_bytes if decode_bytes
            else None, "steps/byte", "StepRunner.global_steps, after the first byte"),
        "generated_bytes": metric(generated, "bytes", "stream length"),
        "cpu_s_per_run": metric(cpu_s / len(runs), "s", CPU_TIMER),
        "cpu_percent": metric(100 * cpu_s / wall_s if wall_s > 0 else None, "%",
                              f"{CPU_TIMER} / wall time"),
        "peak_rss_mb": metric(result.peak_rss_mb, "MiB", result.peak_rss_source),
        "rss_after_load_mb": metric(result.rss_after_load_mb, "MiB", "VmRSS after loading"),
        "load_s": metric(result.load_s, "s", "time.perf_counter, bundle check and sessions"),
    })
    metrics.update(_energy_metrics(result, energy, generated, wall_s))
    return metrics


def _energy_metrics(result: ConfigResult, energy: SourceInfo, generated: int,
                    wall_s: float) -> dict[str, dict[str, Any]]:
    # one run without a reading makes the total unknown rather than too small
    known = [run.energy_j for run in result.runs if run.energy_j is not None]
    total = float(sum(known)) if len(known) == len(result.runs) else None
    per_byte = total / generated * 1e3 if total is not None and generated else None
    power = total / wall_s if total is not None and wall_s > 0 else None
    metrics = {
        "energy_per_byte_mj": metric(per_byte, "mJ/byte", energy.label),
        "power_w": metric(power, "W", energy.label),
    }
    idle = result.idle_power_w
    if energy.measured and idle is not None:
        net = None if total is None or not generated else \
            (total - idle * wall_s) / generated * 1e3
        metrics["idle_power_w"] = metric(idle, "W", f"{energy.label}, before the runs")
        metrics["energy_per_byte_above_idle_mj"] = metric(
            net, "mJ/byte", f"{energy.label}, minus idle power x run time")
    return metrics


def ratios(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return b / a for every metric of a, with None where a value is missing or a's is 0."""
    result: dict[str, float | None] = {}
    for name, entry in a.items():
        value_a, value_b = entry["value"], b.get(name, {}).get("value")
        result[name] = value_b / value_a if value_a and value_b is not None else None
    return result


# -- JSON -----------------------------------------------------------------------------------


def run_record(run: Any, origin_s: float) -> dict[str, Any]:
    return {
        "index": run.index,
        "prompt_bytes": run.prompt_bytes,
        "generated_bytes": run.generated_bytes,
        "stop_reason": run.stop_reason,
        "start_s": run.start_s - origin_s,
        "wall_s": run.wall_s,
        "time_to_first_byte_ms": None if run.time_to_first_byte_s is None
        else run.time_to_first_byte_s * 1e3,
        "sampled_first_byte_ms": None if run.sampled_first_byte_s is None
        else run.sampled_first_byte_s * 1e3,
        "decode_s": run.decode_s,
        "global_steps": run.decode_global_steps,
        "cpu_s": run.cpu_s,
        "energy_j": run.energy_j,
    }


def config_label(config: Any) -> str:
    """Return a short name of a configuration, such as "a int8 2t 64B"."""
    prompts = f"{config.prompt_bytes}B" if config.prompt_bytes is not None else "file"
    return f"{config.bundle_key} {config.precision} {config.threads}t {prompts}"


def power_segment(name: str, times_s: np.ndarray, watts: np.ndarray,
                  origin_s: float) -> dict[str, Any]:
    """Return one stretch of the power timeline, with times from the profile's start."""
    return {"name": name,
            "time_s": [round(float(t) - origin_s, 6) for t in times_s],
            "power_w": [round(float(w), 6) for w in watts]}


def build_document(command: list[str], machine: dict[str, Any], energy: SourceInfo,
                   notes: list[str], sampler: PowerSampler, origin_s: float, settings: Settings,
                   loaded: dict[str, Any], results: list[ConfigResult]) -> dict[str, Any]:
    """Assemble the JSON result; `loaded` maps "a" (and "b" when comparing) to bundles."""
    entries = []
    for result in results:
        entries.append({
            "config": result.config.to_dict(),
            "bundle_id": result.bundle_id,
            "metrics": summarize(result, energy),
            "runs": [run_record(run, origin_s) for run in result.runs],
        })
    comparison = []
    if "b" in loaded:
        for a, b in zip(entries[0::2], entries[1::2], strict=True):
            comparison.append({
                "config": {key: a["config"][key] for key in
                           ("precision", "threads", "prompt_bytes")},
                "ratios_b_over_a": ratios(a["metrics"], b["metrics"]),
            })
    idle_times, idle_watts = sampler.power_series()
    segments = [power_segment("idle", idle_times, idle_watts, origin_s)]
    segments += [power_segment(config_label(result.config), result.power_times_s,
                               result.power_w, origin_s) for result in results]
    return {
        "schema": SCHEMA,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "command": command,
        "machine": machine,
        "energy_source": energy.to_dict(),
        "energy_source_notes": notes,
        "power_samples": {
            "interval_s": sampler.interval_s,
            "read_errors": sampler.read_errors + sum(result.read_errors for result in results),
            "segments": segments,
        },
        "settings": {"runs": settings.runs, "warmup": settings.warmup,
                     "max_bytes": settings.max_bytes, "temperature": settings.temperature,
                     "seed": settings.seed},
        "bundles": {key: describe_bundle(bundle) for key, bundle in loaded.items()},
        "results": entries,
        "comparison": comparison,
    }


def describe_bundle(bundle: Any) -> dict[str, Any]:
    sizes = {precision: sum(files[precision].stat().st_size
                            for files in bundle.graph_files.values())
             for precision in bundle.precisions}
    return {
        "path": str(bundle.path),
        "id": bundle_id(bundle),
        "created_by": bundle.manifest.get("created_by"),
        "precisions": list(bundle.precisions),
        "graph_bytes": sizes,
        "n_latent_steps": bundle.n_latent_steps,
        "patching": bundle.model_config.get("patching"),
    }


# -- table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableRow:
    """One line of the table: a configuration's metrics, or the b / a ratios of a pair."""

    label: str  # "a", "b" or "b/a"
    config: dict[str, Any]  # Config.to_dict()
    values: dict[str, Any]  # metric dicts, or plain ratios when is_ratio
    is_ratio: bool = False


def _cell(value: float | None, fmt: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, fmt) + suffix


def format_table(rows: Sequence[TableRow]) -> str:
    """Return an aligned text table with one line per row."""
    headings = ["bundle", "precision", "threads", "prompt B",
                *(heading for _, heading, _ in _TABLE_COLUMNS), "energy"]
    lines = [headings]
    for row in rows:
        cells = [row.label, row.config["precision"], str(row.config["threads"]),
                 str(row.config["prompt_bytes"] or "file")]
        for name, _, fmt in _TABLE_COLUMNS:
            if row.is_ratio:
                cells.append(_cell(row.values.get(name), ".2f", "x"))
            else:
                cells.append(_cell(row.values[name]["value"], fmt))
        # "measured" or "estimated", the first word of the energy source's label
        energy = "" if row.is_ratio else row.values["energy_per_byte_mj"]["source"]
        cells.append(energy.split(":")[0])
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(headings))]
    numeric = range(2, len(headings) - 1)
    return "\n".join(
        "  ".join(cell.rjust(width) if i in numeric else cell.ljust(width)
                  for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip()
        for line in lines)


def table_rows(document: dict[str, Any]) -> list[TableRow]:
    """Return the table rows of a result document, with a b/a row after every b row."""
    rows = []
    ratios = iter(document["comparison"])
    for entry in document["results"]:
        config = entry["config"]
        rows.append(TableRow(config["bundle"], config, entry["metrics"]))
        if config["bundle"] == "b":
            rows.append(TableRow("b/a", config, next(ratios)["ratios_b_over_a"],
                                        is_ratio=True))
    return rows


# -- CSV ------------------------------------------------------------------------------------

CSV_COLUMNS = ("bundle", "precision", "threads", "prompt_bytes", "run", "byte_index",
               "time_s", "latency_ms", "global_steps", "power_w")


def write_csv(path: Path, results: Sequence[ConfigResult], origin_s: float) -> None:
    """Write one row per generated byte.

    power_w is interpolated from the sampler at the byte's time, and left empty outside the
    sampled timeline.
    """
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for result in results:
            config = result.config
            for run in result.runs:
                watts = interpolate_power(run.byte_times_s, result.power_times_s,
                                          result.power_w)
                latencies = run.byte_latencies_s() * 1e3
                steps = run.byte_global_steps
                for index, time_s in enumerate(run.byte_times_s):
                    writer.writerow([
                        config.bundle_key, config.precision, config.threads,
                        config.prompt_bytes if config.prompt_bytes is not None else "",
                        run.index, index, f"{time_s - origin_s:.6f}",
                        "" if np.isnan(latencies[index]) else f"{latencies[index]:.4f}",
                        int(steps[index]),
                        "" if np.isnan(watts[index]) else f"{watts[index]:.4f}",
                    ])


# -- plot -----------------------------------------------------------------------------------


def write_plot(path: Path, results: Sequence[ConfigResult], segments: Sequence[dict[str, Any]],
               origin_s: float, energy: SourceInfo) -> None:
    """Draw a PNG: per-byte latency histograms and power over time with the runs shaded.

    Needs matplotlib (the `plot` extra), which the caller checks is installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (histogram, timeline) = plt.subplots(2, 1, figsize=(9, 7))
    latencies = {result.config: np.concatenate([run.latencies_s for run in result.runs]) * 1e3
                 for result in results}
    pooled = np.concatenate([*latencies.values(), [np.nan]])
    positive = pooled[pooled > 0]
    # log-spaced bins, because bytes that pay for a global step take several times longer
    bins = np.geomspace(positive.min(), positive.max() * 1.01, 60) if len(positive) else 10
    for config, latencies_ms in latencies.items():
        if len(latencies_ms):
            histogram.hist(latencies_ms, bins=bins, histtype="step", label=config_label(config))
    if len(positive):
        histogram.set_xscale("log")
    histogram.set_xlabel("per-byte latency (ms)")
    histogram.set_ylabel("bytes")
    histogram.legend(fontsize="small")

    # one line per process: the idle measurement, then one per configuration
    for segment in segments:
        timeline.plot(segment["time_s"], segment["power_w"], linewidth=1, color="tab:blue")
    for result in results:
        for run in result.runs:
            timeline.axvspan(run.start_s - origin_s, run.end_s - origin_s, alpha=0.15,
                             color="tab:orange", linewidth=0)
    timeline.set_xlabel("time (s), with the measured runs shaded")
    timeline.set_ylabel("power (W)")
    timeline.set_title(textwrap.fill(energy.label, 110), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
