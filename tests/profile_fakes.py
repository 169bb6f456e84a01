"""Fake sysfs trees and a fake vcgencmd for the profiler's energy-source tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

# Rail readings in the layout of a Raspberry Pi 5's `vcgencmd pmic_read_adc`: rail name ->
# (channel of the current, amps, channel of the voltage, volts). The values are written to
# look like an idle board, not captured from one; volts x amps sums to about 1.69 W.
PI5_RAILS = {
    "3V7_WL_SW": (0, 0.00390372, 8, 3.71685600),
    "3V3_SYS": (1, 0.05171280, 9, 3.30946800),
    "1V8_SYS": (2, 0.16297850, 10, 1.79959700),
    "DDR_VDD2": (3, 0.02244600, 11, 1.11038400),
    "DDR_VDDQ": (4, 0.00000000, 12, 0.60585650),
    "1V1_SYS": (5, 0.18543320, 13, 1.10524900),
    "0V8_SW": (6, 0.31613050, 14, 0.80024570),
    "VDD_CORE": (7, 0.70256000, 15, 0.88233930),
    "0V8_AON": (16, 0.00000000, 19, 0.80024570),
    "3V3_DAC": (17, 0.00009158, 20, 3.31134800),
    "3V3_ADC": (18, 0.00042723, 21, 3.30768500),
    "HDMI": (22, 0.02149500, 23, 5.14066600),
}
# rails with a voltage reading only, which carry no power figure
PI5_VOLTAGE_ONLY = {"EXT5V": (24, 5.12946000), "BATT": (25, 0.00000000)}


def pi5_pmic_output() -> str:
    """Return `vcgencmd pmic_read_adc` output for PI5_RAILS: currents first, then volts."""
    lines = [f"{name + '_A':>16} current({channel})={amps:.8f}A"
             for name, (channel, amps, _, _) in PI5_RAILS.items()]
    lines += [f"{name + '_V':>16} volt({channel})={volts:.8f}V"
              for name, (_, _, channel, volts) in PI5_RAILS.items()]
    lines += [f"{name + '_V':>16} volt({channel})={volts:.8f}V"
              for name, (channel, volts) in PI5_VOLTAGE_ONLY.items()]
    return "\n".join(lines) + "\n"


def pi5_total_w() -> float:
    return sum(amps * volts for _, amps, _, volts in PI5_RAILS.values())


def write_file(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def add_rapl_zone(sysfs: Path, zone: str, name: str, energy_uj: int,
                  max_range_uj: int = 262143328850, energy_mode: int = 0o444) -> Path:
    """Create <sysfs>/class/powercap/<zone> with its name, counter and range; return it."""
    directory = sysfs / "class" / "powercap" / zone
    write_file(directory / "name", f"{name}\n")
    write_file(directory / "max_energy_range_uj", f"{max_range_uj}\n")
    write_file(directory / "energy_uj", f"{energy_uj}\n", energy_mode)
    return directory


def add_hwmon(sysfs: Path, index: int, name: str, files: dict[str, str]) -> Path:
    """Create <sysfs>/class/hwmon/hwmon<index> with a name and the given files."""
    directory = sysfs / "class" / "hwmon" / f"hwmon{index}"
    write_file(directory / "name", f"{name}\n")
    for file_name, text in files.items():
        write_file(directory / file_name, f"{text}\n")
    return directory


def write_vcgencmd(directory: Path, output: str, status: int = 0, stderr: str = "") -> Path:
    """Write an executable `vcgencmd` that prints `output` (and `stderr`), exits `status`."""
    script = directory / "vcgencmd"
    directory.mkdir(parents=True, exist_ok=True)
    script.write_text("#!/bin/sh\n"
                      f"cat <<'EOF'\n{output}EOF\n"
                      f"printf '%s' '{stderr}' >&2\n"
                      f"exit {status}\n")
    script.chmod(0o755)
    return script


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run the body as the unprivileged user 65534 (nobody) when the tests run as root, so
    that file modes apply.

    Only the effective ids change, so the real root ids can switch back afterwards.
    """
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
