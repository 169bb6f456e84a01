"""Energy sources, best first: RAPL, hwmon, the Raspberry Pi 5 PMIC, and an estimate.

Each source's `SourceInfo` states whether it measures or estimates, and what it covers:

- ``rapl``: Intel and AMD RAPL energy counters of the CPU packages, through
  ``<sysfs>/class/powercap/intel-rapl:N/energy_uj``. The counters cover the whole package,
  so other processes on it count too.
- ``hwmon``: hardware-monitor energy counters (``energy*_input``, microjoules) or, when a
  board has none, power sensors (``power*_input`` or ``power*_average``, microwatts).
- ``pmic``: the Raspberry Pi 5 power-management IC, read with ``vcgencmd pmic_read_adc``: the
  sum over its rails of volts × amps. It misses the 5 V loads (USB devices, fan) and the
  PMIC's own conversion losses, so the board draws more at the wall.
- ``estimate``: the CPU time of the process that reads it × a power figure per busy core. It
  is not a measurement, excludes idle and board power, and its label prints the figure it
  assumed.

`open_energy_source` tries them in that order and returns the first that reads, with one note
per skipped source giving the reason. A source reads either a counter (joules since it was
opened, wrap-around handled) or an instantaneous power in watts, and
`EnergySource.cumulative` states which.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCE_NAMES = ("rapl", "hwmon", "pmic", "estimate")
DEFAULT_SYSFS_ROOT = Path("/sys")
VCGENCMD_TIMEOUT_S = 5.0

# Power drawn by one fully busy core above idle, in watts, for the CPU-time estimate.
# The Raspberry Pi figures are (four-core stress power - idle power) / 4 from published
# whole-board measurements: Pi 5 about 7.2 W under stress and 3.0 W idle, Pi 4 about 6.4 W
# and 2.7 W. The others are rough guesses, so set --watts-per-core when you know better.
WATTS_PER_CORE = {
    "raspberry-pi-5": 1.0,
    "raspberry-pi-4": 0.9,
    "arm64": 1.0,  # other 64-bit Arm boards: the Pi 5 figure, unmeasured
    "x86-64": 5.0,  # a laptop or desktop core at full clock, about package power / cores
    "other": 5.0,
}

# hwmon drivers that report a graphics card, whose power is not the CPU's.
_GPU_HWMON_NAMES = frozenset({"amdgpu", "radeon", "nouveau", "i915", "xe"})
_RAPL_ZONE = re.compile(r"intel-rapl:\d+")
# One rail reading of `vcgencmd pmic_read_adc`, for example
# "   VDD_CORE_A current(7)=0.74096000A" or "   VDD_CORE_V volt(15)=0.88233930V".
_PMIC_LINE = re.compile(
    r"^\s*(?P<rail>\S+)_(?P<kind>[AV])\s+(?:current|volt|voltage)\(\d+\)\s*=\s*"
    r"(?P<value>[-+0-9.eE]+)\s*[AV]?\s*$")


class SensorError(Exception):
    """An energy source cannot be opened or read. The message is one line."""


class SensorPermissionError(SensorError):
    """A sensor file exists but this user may not read it."""


@dataclass(frozen=True)
class SourceInfo:
    """Description of an energy source: its name, whether it measures, and what it covers."""

    name: str  # rapl, hwmon, pmic or estimate
    measured: bool  # False for the CPU-time estimate
    description: str  # what the figures cover, for example "RAPL package-0 (whole package)"
    assumption: str | None = None  # the estimate's assumption, printed beside its figures

    @property
    def label(self) -> str:
        """Return "measured: ..." or "estimated: ..." with the assumption, for reports."""
        if self.measured:
            return f"measured: {self.description}"
        return f"estimated: {self.description}, assuming {self.assumption}"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "measured": self.measured, "label": self.label,
                "description": self.description, "assumption": self.assumption}


class EnergySource(ABC):
    """A source of energy or power readings.

    Several threads may call `read`, but only one at a time, because the sampler holds a lock.
    """

    info: SourceInfo
    cumulative: bool  # True: read() returns joules since opening. False: watts at this moment

    @abstractmethod
    def read(self) -> float:
        """Return the reading, or raise SensorError when the sensor cannot be read."""


# -- RAPL -----------------------------------------------------------------------------------


@dataclass
class _Counter:
    """One energy counter in microjoules, accumulated across wrap-arounds."""

    path: Path
    max_range_uj: int | None  # the counter returns to 0 after this value (None: not stated)
    last_uj: int
    total_uj: int = 0

    def advance(self, value_uj: int) -> None:
        delta = value_uj - self.last_uj
        if delta < 0:
            if self.max_range_uj is not None:
                delta += self.max_range_uj
            else:
                # a counter without a stated range went back, so it was reset to zero
                logger.warning("energy counter %s went back from %d to %d uJ, so it was reset; "
                               "counting from 0",
                               self.path, self.last_uj, value_uj)
                delta = value_uj
        self.total_uj += delta
        self.last_uj = value_uj


def _read_int(path: Path) -> int:
    """Return the integer in a sysfs file, or raise SensorError saying why it cannot."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except PermissionError:
        raise SensorPermissionError(f"permission denied reading {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise SensorError(f"cannot read {path} ({reason})") from None
    try:
        return int(text)
    except ValueError:
        raise SensorError(f"{path} contains {text[:40]!r}, not an integer") from None


def _read_name(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


class RaplSource(EnergySource):
    """Sum of the RAPL package counters under <sysfs>/class/powercap."""

    cumulative = True

    def __init__(self, sysfs_root: Path = DEFAULT_SYSFS_ROOT) -> None:
        powercap = sysfs_root / "class" / "powercap"
        zones = sorted(p for p in powercap.glob("intel-rapl:*") if _RAPL_ZONE.fullmatch(p.name))
        if not zones:
            raise SensorError(f"no RAPL zones under {powercap}")
        names = {zone: _read_name(zone / "name") for zone in zones}
        # psys covers the whole platform, packages included, so adding both counts twice
        packages = [zone for zone in zones if names[zone].startswith("package")]
        chosen = packages or zones

        self._counters = []
        for zone in chosen:
            energy_path = zone / "energy_uj"
            try:
                value = _read_int(energy_path)
            except SensorPermissionError:
                raise SensorError(
                    f"RAPL counter {energy_path} is readable by root only (Linux 5.10 and "
                    f"later): run as root, or grant read access until the next boot with "
                    f"`sudo chmod o+r {powercap}/intel-rapl:*/energy_uj`") from None
            self._counters.append(_Counter(energy_path, _read_int(zone / "max_energy_range_uj"),
                                           value))
        zone_names = ", ".join(names[zone] or zone.name for zone in chosen)
        self.info = SourceInfo("rapl", True, f"RAPL {zone_names} (the whole CPU package, so "
                                             "other processes on it count too)")

    def read(self) -> float:
        for counter in self._counters:
            counter.advance(_read_int(counter.path))
        return sum(counter.total_uj for counter in self._counters) * 1e-6


# -- hwmon ----------------------------------------------------------------------------------


def _hwmon_inputs(device: Path, kind: str) -> list[Path]:
    """Return the device's energy or power inputs.

    When some labels name a socket or package, only those inputs count, because the per-core
    inputs are already inside the socket total.
    """
    if kind == "energy":
        inputs = sorted(device.glob("energy*_input"))
    else:
        inputs = sorted(device.glob("power*_input")) or sorted(device.glob("power*_average"))
    labelled = []
    for path in inputs:
        label_path = path.with_name(path.name.split("_")[0] + "_label")
        label = _read_name(label_path).lower()
        if "socket" in label or "package" in label:
            labelled.append(path)
    return labelled or inputs


class HwmonSource(EnergySource):
    """Sum of hwmon energy counters, or of hwmon power sensors when no device has counters."""

    def __init__(self, sysfs_root: Path = DEFAULT_SYSFS_ROOT) -> None:
        hwmon = sysfs_root / "class" / "hwmon"
        devices = [d for d in sorted(hwmon.glob("hwmon*"))
                   if _read_name(d / "name") not in _GPU_HWMON_NAMES]
        for kind in ("energy", "power"):
            inputs = [path for device in devices for path in _hwmon_inputs(device, kind)]
            if inputs:
                break
        else:
            raise SensorError(f"no hwmon energy or power inputs under {hwmon}")

        # one unreadable input would make the sum too small, so it rules the source out
        self._counters = [_Counter(path, None, _read_int(path)) for path in inputs]
        self.cumulative = kind == "energy"
        self._inputs = inputs
        sensor_names = ", ".join(
            f"{_read_name(path.parent / 'name') or path.parent.name} {path.name}"
            for path in inputs)
        sensor_kind = "energy counters" if self.cumulative else "power sensors"
        self.info = SourceInfo("hwmon", True, f"hwmon {sensor_kind} {sensor_names}")

    def read(self) -> float:
        if not self.cumulative:
            return sum(_read_int(path) for path in self._inputs) * 1e-6
        for counter in self._counters:
            counter.advance(_read_int(counter.path))
        return sum(counter.total_uj for counter in self._counters) * 1e-6


# -- Raspberry Pi 5 PMIC --------------------------------------------------------------------


def rail_power_w(output: str) -> dict[str, float]:
    """Return the power in watts of every rail of `vcgencmd pmic_read_adc` output that has
    both a current and a voltage reading, keyed by rail name (for example VDD_CORE)."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in output.splitlines():
        match = _PMIC_LINE.match(line)
        if match is None:
            continue
        readings = amps if match["kind"] == "A" else volts
        try:
            readings[match["rail"]] = float(match["value"])
        except ValueError:
            continue
    return {rail: volts[rail] * amps[rail] for rail in sorted(amps) if rail in volts}


class PmicSource(EnergySource):
    """Power of the Raspberry Pi 5 PMIC rails, read by running `vcgencmd pmic_read_adc`."""

    cumulative = False

    def __init__(self, vcgencmd: str | None = None) -> None:
        found = vcgencmd or shutil.which("vcgencmd")
        if found is None:
            raise SensorError("vcgencmd not found on PATH (Raspberry Pi OS only)")
        self._command = [found, "pmic_read_adc"]
        rails = self._read_rails()
        self.info = SourceInfo(
            "pmic", True,
            f"Raspberry Pi 5 PMIC, sum of volts x amps over {len(rails)} rails (misses the "
            "5 V loads such as USB devices and the fan, and the PMIC's conversion losses)")

    def _read_rails(self) -> dict[str, float]:
        command = " ".join(self._command)
        try:
            result = subprocess.run(self._command, capture_output=True, text=True,
                                    timeout=VCGENCMD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise SensorError(f"`{command}` timed out after {VCGENCMD_TIMEOUT_S:g} s") from None
        except OSError as error:
            raise SensorError(f"cannot run `{command}` ({error.strerror or error})") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            reason = detail[0] if detail else "no output"
            raise SensorError(f"`{command}` failed with exit status {result.returncode} "
                              f"({reason})")
        rails = rail_power_w(result.stdout)
        if not rails:
            first = result.stdout.strip().splitlines()[:1]
            shown = f" (it printed {first[0][:60]!r})" if first else " (it printed nothing)"
            raise SensorError(f"`{command}` printed no rail currents and voltages{shown}: "
                              "only the Raspberry Pi 5 has this PMIC")
        return rails

    def read(self) -> float:
        return sum(self._read_rails().values())


# -- estimate from CPU time -----------------------------------------------------------------


def process_cpu_s() -> float:
    """Return the user + system CPU time of this process, all threads, in seconds.

    time.process_time reads CLOCK_PROCESS_CPUTIME_ID on Linux, which resolves nanoseconds.
    os.times counts clock ticks of 10 ms, too coarse for a run of a few milliseconds.
    """
    return time.process_time()


class CpuTimeEstimate(EnergySource):
    """Energy estimated as this process's CPU time × a power figure per busy core."""

    cumulative = True

    def __init__(self, device_class: str, watts_per_core: float | None = None) -> None:
        if watts_per_core is None:
            watts_per_core = WATTS_PER_CORE.get(device_class, WATTS_PER_CORE["other"])
            origin = f"the default for device class {device_class}, set --watts-per-core"
        else:
            origin = "set by --watts-per-core"
        if not watts_per_core > 0:
            raise SensorError(f"watts per core must be positive, got {watts_per_core}")
        self.watts_per_core = watts_per_core
        self._start_cpu_s = process_cpu_s()
        self.info = SourceInfo(
            "estimate", False, "CPU time of the process running the model x power per busy core",
            f"{watts_per_core:g} W per busy core above idle ({origin}), with idle and "
            "board power left out")

    def read(self) -> float:
        return (process_cpu_s() - self._start_cpu_s) * self.watts_per_core


# -- detection ------------------------------------------------------------------------------


def open_energy_source(choice: str = "auto", sysfs_root: Path = DEFAULT_SYSFS_ROOT,
                       device_class: str = "other", watts_per_core: float | None = None,
                       vcgencmd: str | None = None) -> tuple[EnergySource, list[str]]:
    """Open the best energy source, or the one named by `choice`.

    Returns the source and one note per source that was tried and skipped. With choice "auto"
    a source that fails falls back to the next, but a named source that fails raises
    SensorError. The estimate always opens unless watts_per_core is not positive.
    """
    if choice != "auto" and choice not in SOURCE_NAMES:
        raise ValueError(f"energy source {choice!r} must be auto or one of {SOURCE_NAMES}")
    openers = {
        "rapl": lambda: RaplSource(sysfs_root),
        "hwmon": lambda: HwmonSource(sysfs_root),
        "pmic": lambda: PmicSource(vcgencmd),
        "estimate": lambda: CpuTimeEstimate(device_class, watts_per_core),
    }
    if choice != "auto":
        return openers[choice](), []

    notes = []
    for name in SOURCE_NAMES[:-1]:
        try:
            source = openers[name]()
        except SensorError as error:
            notes.append(f"{name}: {error}")
            logger.debug("energy source %s skipped: %s", name, error)
            continue
        return source, notes
    return openers["estimate"](), notes
