"""Measuring one configuration (bundle, precision, threads, prompts): warm-up, then N runs.

Each run streams one prompt's answer through `Generator.stream_bytes` and stamps every byte
with `time.perf_counter` as the caller receives it. No stop sequences are passed, so every
chunk is one byte. The generator runs the model on a byte before it yields it, so a byte
reaches the caller one model step after it was sampled. From those stamps come:

- time to first byte: from the call until the first byte reaches the caller, prompt
  processing included.
- per-byte latency: the time between two consecutive bytes. The first byte has none, and
  neither has the last when the run stopped at max_bytes, because the generator runs no
  model step after it.
- bytes/s: (bytes - 1) / `GenerationStats.decode_s`, summed over runs, as elr-run reports it.
- global steps per byte: global model calls while decoding / (bytes - 1), as
  `GenerationStats` counts them. The runner's counter is read after every byte, so the CSV
  shows which bytes paid for a global step.

CPU time is the process's user + system time over the run (all threads), and CPU % is that
divided by the run's wall time, so it exceeds 100 % with several busy threads. Peak RSS is
the kernel's high-water mark (VmHWM), reset before the bundle is loaded.

`measure_config_isolated` measures each configuration in a fresh process. In one process,
memory that the allocator kept from an earlier configuration counts into the next one's peak
RSS: a sweep over fp32 then int8 put 50 MiB of fp32 memory into the int8 figure.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elr_profile.energy import open_energy_source, process_cpu_s
from elr_profile.sampler import PowerSampler

logger = logging.getLogger(__name__)

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Settings:
    """Run settings that every configuration of one profile shares."""

    runs: int = 5  # measured runs per configuration
    warmup: int = 1  # runs before the measured ones, not recorded
    max_bytes: int = 128  # bytes generated per run, unless the model ends the text first
    temperature: float = 0.0  # 0: greedy, the same text every run
    seed: int | None = None  # sampling seed of the first run (None: a fresh seed every run)

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise ValueError(f"runs={self.runs} must be at least 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be at least 0")
        if self.max_bytes < 2:
            raise ValueError(f"max_bytes={self.max_bytes} must be at least 2, so that a run "
                             "has a decode step to time")


@dataclass(frozen=True)
class Config:
    """One point of a sweep."""

    bundle_key: str  # "a", or "b" for the bundle it is compared with
    bundle: Path
    precision: str
    threads: int
    prompt_bytes: int | None  # length the prompts were cut to (None: from a prompt file)

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle_key, "bundle_path": str(self.bundle),
                "precision": self.precision, "threads": self.threads,
                "prompt_bytes": self.prompt_bytes}


@dataclass
class Run:
    """One measured run: what the stream returned and when."""

    index: int
    prompt_bytes: int
    byte_times_s: np.ndarray  # perf_counter time at which each byte reached the caller
    global_steps: np.ndarray  # the runner's global model calls when each byte was released
    prompt_global_steps: int  # global model calls for the prompt, before the first byte
    sampled_first_byte_s: float | None  # GenerationStats.time_to_first_byte_s
    decode_s: float  # GenerationStats.decode_s: from the first byte sampled to the last
    start_s: float  # perf_counter before the call
    end_s: float  # perf_counter after the last byte
    cpu_s: float
    energy_j: float | None
    stop_reason: str | None

    @property
    def generated_bytes(self) -> int:
        return len(self.byte_times_s)

    @property
    def wall_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def time_to_first_byte_s(self) -> float | None:
        """Time from the call until the first byte reached the caller."""
        if not len(self.byte_times_s):
            return None
        return float(self.byte_times_s[0] - self.start_s)

    def byte_latencies_s(self) -> np.ndarray:
        """Return each byte's time since the byte before, NaN where there is no full step."""
        latencies = np.concatenate([[np.nan], np.diff(self.byte_times_s)])
        if self.stop_reason == "max_bytes" and len(latencies) > 1:
            latencies[-1] = np.nan  # only sampling ran, no model step
        return latencies

    @property
    def latencies_s(self) -> np.ndarray:
        """Per-byte latencies of the bytes that have one."""
        latencies = self.byte_latencies_s()
        return latencies[~np.isnan(latencies)]

    @property
    def byte_global_steps(self) -> np.ndarray:
        """Global model calls that feeding each byte to the model caused."""
        return np.diff(self.global_steps, prepend=self.prompt_global_steps)

    @property
    def decode_global_steps(self) -> int:
        """Global model calls while decoding, as `GenerationStats.global_steps` counts them."""
        return int(self.global_steps[-1] - self.prompt_global_steps) \
            if len(self.global_steps) else 0


@dataclass
class ConfigResult:
    """Measurements of one configuration."""

    config: Config
    bundle_id: str
    load_s: float
    rss_after_load_mb: float
    peak_rss_mb: float
    peak_rss_source: str
    runs: list[Run] = field(default_factory=list)
    idle_power_w: float | None = None  # from the profile's idle measurement, if any
    power_times_s: np.ndarray = field(default_factory=lambda: np.empty(0))  # perf_counter
    power_w: np.ndarray = field(default_factory=lambda: np.empty(0))  # sampled while measuring
    read_errors: int = 0  # failed energy readings while measuring


# -- memory ---------------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux 4.0 and later).

    Returns whether the reset worked.
    """
    try:
        PROC_CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _status_kb(key: str) -> int | None:
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 1024
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb(reset_worked: bool) -> tuple[float, str]:
    """Return the peak RSS in MiB and where it came from."""
    kb = _status_kb("VmHWM")
    if kb is not None and reset_worked:
        return kb / 1024, "VmHWM since the bundle was loaded"
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return peak / scale, "ru_maxrss over the whole process (earlier configurations included)"


# -- runs -----------------------------------------------------------------------------------


def _sampling(settings: Settings, run_index: int | None) -> Any:
    """Return the sampling settings of a measured run, or of a warm-up run (index None),
    which gets a fresh seed."""
    from elr_runtime.sampling import SamplingSettings

    seed = None if settings.seed is None or run_index is None else settings.seed + run_index
    return SamplingSettings(temperature=settings.temperature, seed=seed)


def measure_run(generator: Any, prompt: bytes, settings: Settings, sampler: PowerSampler,
                index: int) -> Run:
    """Generate once from `prompt` and time every byte."""
    runner = generator.runner
    byte_times: list[float] = []
    global_steps: list[int] = []
    stream = generator.stream_bytes(prompt, _sampling(settings, index),
                                    max_bytes=settings.max_bytes)

    cpu_before = process_cpu_s()
    mark_before = sampler.mark()
    start = time.perf_counter()
    for _chunk in stream:
        # the hot loop: two reads and two appends, so that timing costs little
        byte_times.append(time.perf_counter())
        global_steps.append(runner.global_steps)
    end = time.perf_counter()
    mark_after = sampler.mark()
    cpu_after = process_cpu_s()

    stats = generator.stats
    return Run(index=index, prompt_bytes=stats.prompt_bytes,
               byte_times_s=np.array(byte_times), global_steps=np.array(global_steps),
               prompt_global_steps=stats.prompt_global_steps,
               sampled_first_byte_s=stats.time_to_first_byte_s, decode_s=stats.decode_s,
               start_s=start, end_s=end,
               cpu_s=cpu_after - cpu_before,
               energy_j=sampler.energy_j(mark_before, mark_after),
               stop_reason=stats.stop_reason)


def bundle_id(bundle: Any) -> str:
    """Return a short id of a bundle: the start of its manifest's sha256, which in turn
    lists the sha256 of every file."""
    from elr_runtime.bundle import file_sha256
    from elr_runtime.graph_io import MANIFEST_NAME

    return file_sha256(bundle.path / MANIFEST_NAME)[:16]


def measure_config(config: Config, prompts: Sequence[bytes], settings: Settings,
                   sampler: PowerSampler) -> ConfigResult:
    """Load the bundle at the config's precision and threads, warm up, and measure."""
    from elr_runtime.bundle import load_bundle
    from elr_runtime.generate import Generator
    from elr_runtime.session import SessionConfig

    gc.collect()
    reset_worked = reset_peak_rss()
    started = time.perf_counter()
    bundle = load_bundle(config.bundle)
    generator = Generator(bundle, precision=config.precision,
                          session_config=SessionConfig(threads=config.threads))
    load_s = time.perf_counter() - started
    rss_after_load = current_rss_mb()
    logger.debug("%s %s, %d threads: loaded in %.2f s, RSS %.1f MiB", config.bundle,
                config.precision, config.threads, load_s, rss_after_load)

    # warm-up: first calls allocate buffers and fault in the weights
    for index in range(settings.warmup):
        generator.generate(prompts[index % len(prompts)], _sampling(settings, None),
                           max_bytes=settings.max_bytes)

    runs = []
    for index in range(settings.runs):
        run = measure_run(generator, prompts[index % len(prompts)], settings, sampler, index)
        runs.append(run)
        logger.debug("run %d: %d bytes in %.3f s", index + 1, run.generated_bytes, run.wall_s)

    peak, peak_source = peak_rss_mb(reset_worked)
    return ConfigResult(config=config, bundle_id=bundle_id(bundle), load_s=load_s,
                        rss_after_load_mb=rss_after_load, peak_rss_mb=peak,
                        peak_rss_source=peak_source, runs=runs)


def measure_idle_power(sampler: PowerSampler, seconds: float) -> float | None:
    """Return the mean power in watts over `seconds` of doing nothing, or None when unknown."""
    if seconds <= 0:
        return None
    start = sampler.mark()
    time.sleep(seconds)
    end = sampler.mark()
    energy = sampler.energy_j(start, end)
    if energy is None or start is None or end is None:
        return None
    return energy / (end.time_s - start.time_s)


# -- a process per configuration ------------------------------------------------------------


def measure_config_isolated(config: Config, prompts: Sequence[bytes], settings: Settings,
                            source_options: dict[str, Any], interval_s: float,
                            log_level: int) -> ConfigResult:
    """Measure one configuration in a fresh process and return its result.

    The child opens the energy source again from `source_options` (open_energy_source's
    keywords) and samples it itself. time.perf_counter reads CLOCK_MONOTONIC on Linux, which
    all processes share, so the child's timestamps fit the parent's timeline.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes=1) as pool:
        return pool.apply(_measure_in_child, (config, list(prompts), settings, source_options,
                                              interval_s, log_level))


def _measure_in_child(config: Config, prompts: list[bytes], settings: Settings,
                      source_options: dict[str, Any], interval_s: float,
                      log_level: int) -> ConfigResult:
    logging.basicConfig(level=log_level, format="elr-profile: %(message)s", stream=sys.stderr)
    if log_level > logging.DEBUG:
        logging.getLogger("elr_runtime").setLevel(logging.WARNING)
    source, _ = open_energy_source(**source_options)
    sampler = PowerSampler(source, interval_s)
    with sampler:
        result = measure_config(config, prompts, settings, sampler)
    result.power_times_s, result.power_w = sampler.power_series()
    result.read_errors = sampler.read_errors
    return result
