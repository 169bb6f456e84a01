"""The machine a profile ran on: CPU model, cores, ISA features, device class, versions."""

from __future__ import annotations

import logging
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from elr_profile.energy import DEFAULT_SYSFS_ROOT

logger = logging.getLogger(__name__)

DEFAULT_CPUINFO = Path("/proc/cpuinfo")

# /proc/cpuinfo feature names that decide the speed of int8 and fp32 matrix-vector products,
# with the names users search for. Arm lists them under "Features", x86 under "flags".
ISA_FEATURES = {
    "asimd": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "asimdhp": "fp16",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
    "sse4_2": "sse4.2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx_vnni": "avx-vnni",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512_vnni": "avx512-vnni",
    "avx512_bf16": "avx512-bf16",
    "amx_int8": "amx-int8",
}

# Arm "CPU part" numbers of the cores found on small boards (ARM Ltd, implementer 0x41).
ARM_CORES = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
    "0xd4d": "Cortex-A715",
}


def parse_cpuinfo(text: str) -> dict[str, str]:
    """Return the first value of every key in /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def cpu_model(fields: dict[str, str], board: str | None) -> str:
    """Return a readable CPU name from /proc/cpuinfo fields and the device-tree board model."""
    if "model name" in fields:
        return fields["model name"]
    core = None
    if fields.get("CPU implementer") == "0x41":
        core = ARM_CORES.get(fields.get("CPU part", "").lower())
    parts = [part for part in (board, core) if part]
    if parts:
        return ", ".join(parts)
    return fields.get("Hardware") or fields.get("Processor") or platform.processor() or "unknown"


def isa_features(fields: dict[str, str]) -> list[str]:
    """Return the ISA features of ISA_FEATURES that the CPU reports, by their common names."""
    present = set((fields.get("Features") or fields.get("flags") or "").split())
    return [name for flag, name in ISA_FEATURES.items() if flag in present]


def board_model(sysfs_root: Path = DEFAULT_SYSFS_ROOT) -> str | None:
    """Return the device-tree board model, for example "Raspberry Pi 5 Model B Rev 1.0"."""
    path = sysfs_root / "firmware" / "devicetree" / "base" / "model"
    try:
        return path.read_bytes().rstrip(b"\0\n").decode("utf-8", "replace") or None
    except OSError:
        return None


def device_class(board: str | None, machine: str | None = None) -> str:
    """Return the device class whose power figure the CPU-time estimate uses by default."""
    machine = (machine or platform.machine()).lower()
    if board and board.startswith("Raspberry Pi 5"):
        return "raspberry-pi-5"
    if board and (board.startswith(("Raspberry Pi 4", "Raspberry Pi 400",
                                    "Raspberry Pi Compute Module 4"))):
        return "raspberry-pi-4"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    if machine in ("x86_64", "amd64"):
        return "x86-64"
    return "other"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cpu_governor(sysfs_root: Path) -> str | None:
    path = sysfs_root / "devices" / "system" / "cpu" / "cpu0" / "cpufreq" / "scaling_governor"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def machine_info(sysfs_root: Path = DEFAULT_SYSFS_ROOT,
                 cpuinfo: Path = DEFAULT_CPUINFO) -> dict[str, Any]:
    """Collect what the result of a profile depends on besides the bundle."""
    try:
        fields = parse_cpuinfo(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError as error:
        logger.info("cannot read %s (%s), so the CPU model and features are unknown", cpuinfo,
                    error.strerror or error)
        fields = {}
    board = board_model(sysfs_root)
    return {
        "cpu_model": cpu_model(fields, board),
        "board": board,
        "device_class": device_class(board),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "isa_features": isa_features(fields),
        "cpu_governor": _cpu_governor(sysfs_root),
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "elr_lrt": _version("elr-lrt"),
    }


def describe_machine(info: dict[str, Any]) -> str:
    """Return the machine info as one line for the report's header."""
    features = " ".join(info["isa_features"]) or "no listed ISA features"
    return (f"{info['cpu_model']}, {info['logical_cores']} cores ({info['machine']}), "
            f"{features}, onnxruntime {info['onnxruntime']}")
