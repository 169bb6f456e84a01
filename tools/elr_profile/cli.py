"""elr-profile: latency, memory and energy of a bundle on this machine.

    elr-profile runs/tiny/bundle --runs 10 --threads all --precision all --json profile.json
    elr-profile new/bundle --compare old/bundle --csv steps.csv --plot profile.png

For every configuration (precision x threads x prompt length, and each bundle when comparing
two), a fresh process loads the bundle, generates `--warmup` unrecorded answers, then `--runs`
measured ones. The table on stdout has one line per configuration, and progress and notes go
to stderr.

Exit status: 0 on success, 1 when a bundle or the chosen energy source cannot be used or an
output cannot be written, 2 for invalid arguments or prompts, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from elr_profile import report
from elr_profile.energy import (
    DEFAULT_SYSFS_ROOT,
    SOURCE_NAMES,
    WATTS_PER_CORE,
    SensorError,
    open_energy_source,
)
from elr_profile.machine import describe_machine, machine_info
from elr_profile.measure import (
    Config,
    ConfigResult,
    Settings,
    measure_config_isolated,
    measure_idle_power,
)
from elr_profile.prompts import (
    DEFAULT_PROMPT_BYTES,
    PromptError,
    default_text_path,
    prompts_from_text,
    read_prompt_file,
)
from elr_profile.sampler import DEFAULT_INTERVAL_S, PowerSampler

logger = logging.getLogger("elr_profile.cli")

PROGRAM = "elr-profile"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention
PRECISIONS = ("fp32", "int8")
PLOT_INSTALL = "pip install 'elr-lrt[plot]' (or pip install matplotlib)"


class UsageError(Exception):
    """Invalid arguments or prompts, reported in one line with exit status 2."""


class ProfileError(Exception):
    """A bundle, sensor or output that cannot be used, reported with exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROGRAM} --help)")


def build_parser() -> argparse.ArgumentParser:
    classes = ", ".join(f"{name} {watts:g} W" for name, watts in WATTS_PER_CORE.items())
    parser = _Parser(
        prog=PROGRAM,
        description="Measure time to first byte, per-byte latency, bytes/s, global steps per "
                    "byte, CPU time, peak memory and energy per byte of an ELR-LRT bundle.",
        epilog="Exit status: 0 on success, 1 when a bundle, the energy source or an output "
               "cannot be used, 2 for invalid arguments or prompts, 130 after Ctrl-C.")
    parser.add_argument("bundle", type=Path,
                        help="bundle directory written by elr-export (manifest.json and graphs)")
    parser.add_argument("--compare", type=Path, metavar="BUNDLE",
                        help="a second bundle to measure in the same configurations. The table "
                             "adds its ratios to the first (b/a)")

    # prompts
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompts", type=Path, metavar="FILE",
                         help="UTF-8 prompt file: prompts separated by blank lines, or one per "
                              "line when the file has no blank line")
    prompts.add_argument("--text", type=Path, metavar="FILE",
                         help="text to cut prompts from, at line starts spread through it "
                              "(default: tinyshakespeare.txt in ../shared/data/text beside "
                              "the checkout)")
    prompts.add_argument("--prompt-bytes", default=None, metavar="LIST",
                         help="length of the prompts cut from --text, in bytes, or a comma list "
                              f"to sweep it (default {DEFAULT_PROMPT_BYTES})")

    # runs
    runs = parser.add_argument_group("runs")
    runs.add_argument("--runs", type=int, default=5, metavar="N",
                      help="measured runs per configuration (integer >= 1, default 5)")
    runs.add_argument("--warmup", type=int, default=1, metavar="N",
                      help="unrecorded runs before them (integer >= 0, default 1)")
    runs.add_argument("--max-bytes", type=int, default=128, metavar="N",
                      help="bytes generated per run unless the model ends first "
                           "(integer >= 2, default 128)")
    runs.add_argument("--threads", default="1", metavar="LIST",
                      help="onnxruntime threads per graph: a comma list, or 'all' for 1 to "
                           "the number of CPUs (default 1)")
    runs.add_argument("--precision", default=None, metavar="LIST",
                      help="fp32, int8, a comma list, or 'all' for every precision in the "
                           "bundle (default: int8 when the bundle has it, else fp32)")
    runs.add_argument("--temperature", type=float, default=0.0, metavar="T",
                      help="sampling temperature (default 0: greedy, the same text every run)")
    runs.add_argument("--seed", type=int, default=None, metavar="S",
                      help="seed of the first run's sampler, S + k - 1 for run k (default: "
                           "a fresh seed every run)")

    # energy
    energy = parser.add_argument_group("energy")
    energy.add_argument("--energy-source", choices=("auto", *SOURCE_NAMES), default="auto",
                        help="where energy figures come from (default auto: the first that "
                             "works of rapl, hwmon, pmic, then the CPU-time estimate)")
    energy.add_argument("--watts-per-core", type=float, default=None, metavar="W",
                        help="power of one busy core above idle, in watts, for the estimate "
                             f"(default by device class: {classes})")
    energy.add_argument("--device-class", choices=tuple(WATTS_PER_CORE), default=None,
                        help="device class for the default --watts-per-core (default: "
                             "detected from the board model and CPU architecture)")
    energy.add_argument("--sample-interval-ms", type=float, default=DEFAULT_INTERVAL_S * 1e3,
                        metavar="MS", help="power sampling interval in milliseconds "
                                           f"(> 0, default {DEFAULT_INTERVAL_S * 1e3:g})")
    energy.add_argument("--idle-s", type=float, default=2.0, metavar="S",
                        help="seconds of idle power measured before the runs and subtracted in "
                             "the 'above idle' figure, for measured sources only (default 2, "
                             "0 to skip)")
    energy.add_argument("--sysfs-root", type=Path, default=DEFAULT_SYSFS_ROOT, metavar="DIR",
                        help="where sysfs is mounted (default /sys)")

    # output
    output = parser.add_argument_group("output")
    output.add_argument("--json", metavar="PATH",
                        help="write the full result with machine information as JSON, or print "
                             "it on stdout instead of the table when PATH is '-'")
    output.add_argument("--csv", type=Path, metavar="PATH",
                        help="write one row per generated byte: time, latency, global steps, "
                             "power")
    output.add_argument("--plot", type=Path, metavar="PATH",
                        help="draw a PNG of latency histograms and power over time (needs "
                             "matplotlib: the 'plot' extra)")
    output.add_argument("-q", "--quiet", action="store_true", help="print no progress")
    output.add_argument("-v", "--verbose", action="store_true",
                        help="log every run and sensor detail to stderr")
    return parser


# -- arguments ------------------------------------------------------------------------------


def parse_int_list(option: str, text: str, minimum: int) -> list[int]:
    """Parse a comma list of integers >= minimum, such as "1,2,4"."""
    values = []
    for item in text.split(","):
        try:
            value = int(item.strip())
        except ValueError:
            raise UsageError(f"{option} must be a comma list of integers, got {text!r}") from None
        if value < minimum:
            raise UsageError(f"{option} values must be >= {minimum}, got {value}")
        values.append(value)
    return list(dict.fromkeys(values))


def thread_counts(text: str) -> list[int]:
    cores = os.cpu_count() or 1
    if text.strip() == "all":
        return list(range(1, cores + 1))
    counts = parse_int_list("--threads", text, 1)
    for count in counts:
        if count > cores:
            logger.warning("--threads %d is more than the %d CPUs of this machine", count, cores)
    return counts


def precisions(text: str | None, available: Sequence[str]) -> list[str]:
    """Return the precisions to measure, or raise ProfileError when a bundle lacks one."""
    if text is None:
        return ["int8" if "int8" in available else available[0]]
    if text.strip() == "all":
        return list(available)
    chosen = list(dict.fromkeys(item.strip() for item in text.split(",")))
    for precision in chosen:
        if precision not in PRECISIONS:
            raise UsageError(f"--precision must list fp32 and/or int8 or be 'all', got "
                             f"{precision!r}")
        if precision not in available:
            raise ProfileError(f"the bundle has no {precision} graphs (it has "
                               f"{', '.join(available)}): choose --precision "
                               f"{available[0]} or re-run elr-export with {precision}")
    return chosen


def check_arguments(args: argparse.Namespace) -> tuple[Settings, list[int]]:
    """Check the options and output paths before anything slow runs.

    Returns the run settings and the thread counts.
    """
    settings = _run_settings(args)
    _check_energy_options(args)
    _check_prompt_options(args)
    _check_outputs(args)
    return settings, thread_counts(args.threads)


def _run_settings(args: argparse.Namespace) -> Settings:
    if not args.temperature >= 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    try:
        return Settings(runs=args.runs, warmup=args.warmup, max_bytes=args.max_bytes,
                        temperature=args.temperature, seed=args.seed)
    except ValueError as error:
        # name the command-line flags rather than the Settings fields
        message = str(error)
        for name in ("runs", "warmup", "max_bytes"):
            message = message.replace(f"{name}=", f"--{name.replace('_', '-')} ")
        raise UsageError(message) from None


def _check_energy_options(args: argparse.Namespace) -> None:
    if not args.sample_interval_ms > 0:
        raise UsageError(f"--sample-interval-ms must be > 0, got {args.sample_interval_ms}")
    if not args.idle_s >= 0:
        raise UsageError(f"--idle-s must be >= 0, got {args.idle_s}")
    if args.watts_per_core is not None and not args.watts_per_core > 0:
        raise UsageError(f"--watts-per-core must be > 0, got {args.watts_per_core}")


def _check_prompt_options(args: argparse.Namespace) -> None:
    if args.prompts is None:
        return
    if args.text is not None:
        raise UsageError("--prompts and --text exclude each other: prompts come either from a "
                         "prompt file or cut from a text")
    if args.prompt_bytes is not None:
        raise UsageError("--prompt-bytes sets the length of prompts cut from --text, but "
                         "prompts from --prompts are used as written")


def _check_outputs(args: argparse.Namespace) -> None:
    for option in ("json", "csv", "plot"):
        value = getattr(args, option)
        if value is None or value == "-":
            continue
        parent = Path(value).resolve().parent
        if not parent.is_dir():
            raise UsageError(f"--{option} {value}: directory {parent} does not exist")

    # fail now rather than after a long profile
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(f"--plot needs matplotlib, which is not installed: "
                             f"{PLOT_INSTALL}") from None


def load_prompts(args: argparse.Namespace, count: int) -> dict[int | None, list[bytes]]:
    """Return the prompts keyed by their cut length (None for a prompt file)."""
    if args.prompts is not None:
        return {None: read_prompt_file(args.prompts)}
    text = args.text or default_text_path()
    if text is None:
        raise UsageError("no prompts: pass --prompts FILE, or --text FILE to cut prompts from "
                         "any UTF-8 text (the default, ../shared/data/text/tinyshakespeare.txt "
                         "beside the checkout, is not there)")
    lengths = parse_int_list("--prompt-bytes", args.prompt_bytes or str(DEFAULT_PROMPT_BYTES), 1)
    return {length: prompts_from_text(text, count, length) for length in lengths}


# -- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet \
            else logging.INFO
        logging.basicConfig(level=level, format=f"{PROGRAM}: %(message)s", stream=sys.stderr)
        if not args.verbose:
            # the runtime logs every bundle it loads, but the profiler reports progress itself
            logging.getLogger("elr_runtime").setLevel(logging.WARNING)
        return run(args, list(sys.argv[1:] if argv is None else argv))
    except UsageError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except PromptError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ProfileError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\n{PROGRAM}: interrupted, so no results were written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader closed stdout (`elr-profile ... | head`): the results files are written
        from elr_runtime.cli import silence_stdout

        silence_stdout()
        return 0


def _import_runtime() -> Any:
    """Import the runtime now, so that a missing dependency or an unbuilt compiled patcher
    stops the profile with one line before any work."""
    try:
        from elr_runtime import bundle, generate  # noqa: F401
    except ImportError as error:
        raise ProfileError(f"cannot import the runtime ({error}): install elr-lrt with pip, or "
                           "build it in this checkout with `make .venv/.installed`") from None
    return bundle


def run(args: argparse.Namespace, argv: list[str]) -> int:
    settings, threads = check_arguments(args)
    prompt_sets = load_prompts(args, settings.runs)
    runtime_bundle = _import_runtime()
    loaded = load_bundles(args, runtime_bundle)
    available = [p for p in PRECISIONS if all(p in b.precisions for b in loaded.values())]
    if not available:
        raise ProfileError("the two bundles share no precision, so they cannot be compared: "
                           "export both with --precision both")
    chosen_precisions = precisions(args.precision, available)
    machine = machine_info(args.sysfs_root)
    source, notes = open_source(args, machine)
    # what a child process needs to open the same source again
    source_options = {"choice": source.info.name, "sysfs_root": args.sysfs_root,
                      "device_class": args.device_class or machine["device_class"],
                      "watts_per_core": args.watts_per_core}

    # bundle is the innermost loop, so that b follows a in every configuration
    configs = [Config(key, bundle.path, precision, count, length)
               for precision, count, length in itertools.product(
                   chosen_precisions, threads, prompt_sets)
               for key, bundle in loaded.items()]
    sampler = PowerSampler(source, args.sample_interval_ms / 1e3)
    origin_s = time.perf_counter()
    idle_w = None
    if source.info.measured and args.idle_s > 0:
        logger.info("measuring idle power for %g s", args.idle_s)
        with sampler:
            idle_w = measure_idle_power(sampler, args.idle_s)
    results = measure_all(configs, prompt_sets, settings, source_options, sampler.interval_s,
                          runtime_bundle)
    for result in results:
        result.idle_power_w = idle_w

    document = report.build_document([PROGRAM, *argv], machine, source.info, notes, sampler,
                                     origin_s, settings, loaded, results)
    failed = document["power_samples"]["read_errors"]
    if failed:
        print(f"{PROGRAM}: note: {failed} {source.info.name} readings failed, and runs whose "
              "start or end reading failed have no energy figure", file=sys.stderr)
    write_outputs(args, document, results, origin_s, source.info)
    return EXIT_OK


def load_bundles(args: argparse.Namespace, runtime_bundle: Any) -> dict[str, Any]:
    """Load and check the bundle (key "a") and the one it is compared with ("b")."""
    paths = {"a": args.bundle}
    if args.compare is not None:
        paths["b"] = args.compare
    loaded = {}
    for key, path in paths.items():
        try:
            loaded[key] = runtime_bundle.load_bundle(path)
        except runtime_bundle.BundleError as error:
            raise ProfileError(str(error)) from None
    return loaded


def open_source(args: argparse.Namespace, machine: dict[str, Any]) -> tuple[Any, list[str]]:
    """Open the energy source and print a note for every source skipped on the way."""
    try:
        source, notes = open_energy_source(
            args.energy_source, args.sysfs_root, args.device_class or machine["device_class"],
            args.watts_per_core)
    except SensorError as error:
        raise ProfileError(f"energy source {args.energy_source}: {error}: choose another "
                           "with --energy-source") from None
    for note in notes:
        print(f"{PROGRAM}: note: {note}", file=sys.stderr)
    return source, notes


def measure_all(configs: Sequence[Config], prompt_sets: dict[int | None, list[bytes]],
                settings: Settings, source_options: dict[str, Any], interval_s: float,
                runtime_bundle: Any) -> list[ConfigResult]:
    """Measure every configuration, each in a process of its own."""
    log_level = logging.getLogger().getEffectiveLevel()
    results = []
    for number, config in enumerate(configs, 1):
        prompts = "prompt file" if config.prompt_bytes is None \
            else f"{config.prompt_bytes}-byte prompts"
        logger.info("[%d/%d] bundle %s: %s, %d thread(s), %s", number, len(configs),
                    config.bundle_key, config.precision, config.threads, prompts)
        try:
            results.append(measure_config_isolated(
                config, prompt_sets[config.prompt_bytes], settings, source_options,
                interval_s, log_level))
        except runtime_bundle.BundleError as error:
            raise ProfileError(str(error)) from None
        except SensorError as error:
            raise ProfileError(f"energy source {source_options['choice']} failed in the "
                               f"measuring process: {error}") from None
    return results


# -- outputs --------------------------------------------------------------------------------


def write_outputs(args: argparse.Namespace, document: dict[str, Any],
                  results: list[ConfigResult], origin_s: float, energy: Any) -> None:
    if args.json == "-":
        print(json.dumps(document, indent=2))
    else:
        print(f"machine: {describe_machine(document['machine'])}")
        for key, bundle in document["bundles"].items():
            print(f"bundle {key}: {bundle['path']} (id {bundle['id']})")
        print(f"energy: {energy.label}")
        print(report.format_table(report.table_rows(document)))
    try:
        if args.json not in (None, "-"):
            Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        if args.csv is not None:
            report.write_csv(args.csv, results, origin_s)
        if args.plot is not None:
            report.write_plot(args.plot, results, document["power_samples"]["segments"],
                              origin_s, energy)
    except OSError as error:
        raise ProfileError(f"cannot write {error.filename} ({error.strerror or error})") \
            from None


if __name__ == "__main__":
    sys.exit(main())
