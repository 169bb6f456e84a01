"""The profiler's energy sources on fake sysfs trees and a fake vcgencmd, and the sampler."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from profile_fakes import (
    add_hwmon,
    add_rapl_zone,
    pi5_pmic_output,
    pi5_total_w,
    unprivileged,
    write_vcgencmd,
)

from elr_profile.energy import (
    WATTS_PER_CORE,
    CpuTimeEstimate,
    EnergySource,
    HwmonSource,
    PmicSource,
    RaplSource,
    SensorError,
    SourceInfo,
    open_energy_source,
    rail_power_w,
)
from elr_profile.sampler import PowerSampler


@pytest.fixture
def no_vcgencmd(monkeypatch, tmp_path: Path) -> None:
    """A PATH with the usual tools but no vcgencmd."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}:/usr/bin:/bin")
    if shutil.which("vcgencmd") is not None:
        pytest.skip("this machine has a real vcgencmd on /usr/bin or /bin")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory that any user may enter, unlike pytest's tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="elr-profile-sysfs-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


# -- RAPL -----------------------------------------------------------------------------------


def test_rapl_sums_package_counters(tmp_path):
    add_rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    add_rapl_zone(tmp_path, "intel-rapl:1", "package-1", 5_000_000)
    add_rapl_zone(tmp_path, "intel-rapl:0:0", "core", 7_000_000)  # inside package-0
    add_rapl_zone(tmp_path, "intel-rapl:2", "psys", 9_000_000)  # the whole platform
    source = RaplSource(tmp_path)
    assert source.read() == 0.0

    zones = tmp_path / "class" / "powercap"
    (zones / "intel-rapl:0" / "energy_uj").write_text("1500000\n")
    (zones / "intel-rapl:1" / "energy_uj").write_text("5250000\n")
    (zones / "intel-rapl:2" / "energy_uj").write_text("99000000\n")
    assert source.read() == pytest.approx(0.75)
    assert source.cumulative
    assert source.info.measured
    assert source.info.label.startswith("measured: RAPL package-0, package-1")


def test_rapl_handles_wrap_around(tmp_path):
    zone = add_rapl_zone(tmp_path, "intel-rapl:0", "package-0", 999_000,
                         max_range_uj=1_000_000)
    source = RaplSource(tmp_path)
    (zone / "energy_uj").write_text("500\n")  # passed the maximum and started again at 0
    assert source.read() == pytest.approx(0.0015)
    (zone / "energy_uj").write_text("2500\n")
    assert source.read() == pytest.approx(0.0035)


def test_rapl_permission_denied_says_how_to_grant(shared_tmp):
    add_rapl_zone(shared_tmp, "intel-rapl:0", "package-0", 1_000, energy_mode=0o400)
    with unprivileged(), pytest.raises(SensorError) as caught:
        RaplSource(shared_tmp)
    message = str(caught.value)
    assert "readable by root only (Linux 5.10 and later)" in message
    assert f"sudo chmod o+r {shared_tmp}/class/powercap/intel-rapl:*/energy_uj" in message
    assert "\n" not in message


def test_rapl_without_zones_is_skipped(tmp_path):
    with pytest.raises(SensorError, match="no RAPL zones"):
        RaplSource(tmp_path)


# -- hwmon ----------------------------------------------------------------------------------


def test_hwmon_energy_counters_prefer_socket(tmp_path):
    add_hwmon(tmp_path, 0, "amd_energy", {
        "energy1_input": "100000000", "energy1_label": "Ecore000",
        "energy2_input": "900000000", "energy2_label": "Esocket0",
    })
    add_hwmon(tmp_path, 1, "amdgpu", {"power1_input": "30000000"})
    source = HwmonSource(tmp_path)
    assert source.cumulative
    assert source.read() == 0.0

    (tmp_path / "class/hwmon/hwmon0/energy1_input").write_text("500000000\n")
    (tmp_path / "class/hwmon/hwmon0/energy2_input").write_text("902000000\n")
    assert source.read() == pytest.approx(2.0)  # the socket only; cores are inside it
    assert source.info.label == "measured: hwmon energy counters amd_energy energy2_input"


def test_hwmon_power_sensors_sum_watts(tmp_path):
    add_hwmon(tmp_path, 0, "ina3221", {"power1_input": "1500000", "power2_input": "250000"})
    add_hwmon(tmp_path, 1, "cpu_thermal", {"temp1_input": "45000"})
    source = HwmonSource(tmp_path)
    assert not source.cumulative
    assert source.read() == pytest.approx(1.75)
    assert source.info.measured


def test_hwmon_average_power_when_no_input(tmp_path):
    add_hwmon(tmp_path, 0, "power_meter", {"power1_average": "42000000"})
    assert HwmonSource(tmp_path).read() == pytest.approx(42.0)


def test_hwmon_unreadable_sensor_is_rejected(tmp_path):
    device = add_hwmon(tmp_path, 0, "ina219", {"power1_input": "1000000"})
    (device / "power2_input").mkdir()  # reading it fails like a broken driver would
    with pytest.raises(SensorError, match="cannot read .*power2_input"):
        HwmonSource(tmp_path)


def test_hwmon_non_numeric_reading_is_rejected(tmp_path):
    add_hwmon(tmp_path, 0, "ina219", {"power1_input": "N/A"})
    with pytest.raises(SensorError, match="not an integer"):
        HwmonSource(tmp_path)


# -- Raspberry Pi 5 PMIC --------------------------------------------------------------------


def test_rail_power_pairs_volts_and_amps():
    rails = rail_power_w(pi5_pmic_output())
    assert len(rails) == 12
    assert "EXT5V" not in rails  # a voltage without a current
    assert rails["VDD_CORE"] == pytest.approx(0.70256 * 0.8823393)


def test_pmic_sums_rails_from_vcgencmd(monkeypatch, tmp_path):
    write_vcgencmd(tmp_path / "bin", pi5_pmic_output())
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    source = PmicSource()
    assert not source.cumulative
    assert source.read() == pytest.approx(pi5_total_w())
    assert source.info.label.startswith("measured: Raspberry Pi 5 PMIC")
    assert "12 rails" in source.info.label


def test_pmic_failing_vcgencmd_is_rejected(monkeypatch, tmp_path):
    write_vcgencmd(tmp_path / "bin", "", status=255, stderr="VCHI initialization failed")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    with pytest.raises(SensorError, match="exit status 255 .VCHI initialization failed."):
        PmicSource()


def test_pmic_without_rails_is_rejected(monkeypatch, tmp_path):
    # a Raspberry Pi 4's firmware does not know the command
    write_vcgencmd(tmp_path / "bin", 'error=2 error_msg="Command not registered"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    with pytest.raises(SensorError, match="no rail currents and voltages"):
        PmicSource()


# -- estimate -------------------------------------------------------------------------------


def test_estimate_is_cpu_time_times_power():
    source = CpuTimeEstimate("raspberry-pi-5")
    before = time.process_time()
    deadline = time.perf_counter() + 0.05
    while time.perf_counter() < deadline:
        pass
    used = time.process_time() - before
    energy = source.read()
    assert energy == pytest.approx(used * WATTS_PER_CORE["raspberry-pi-5"], rel=0.2)
    assert source.cumulative


def test_estimate_label_prints_its_assumption():
    info = CpuTimeEstimate("raspberry-pi-4").info
    assert not info.measured
    assert info.label.startswith("estimated: ")
    assert "0.9 W per busy core" in info.label
    assert "device class raspberry-pi-4" in info.label

    custom = CpuTimeEstimate("x86-64", watts_per_core=2.5).info
    assert "2.5 W per busy core above idle (set by --watts-per-core)" in custom.label


def test_estimate_rejects_nonpositive_power():
    with pytest.raises(SensorError, match="must be positive"):
        CpuTimeEstimate("other", watts_per_core=0.0)


# -- detection order ------------------------------------------------------------------------


def test_auto_prefers_rapl(tmp_path, no_vcgencmd):
    add_rapl_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    add_hwmon(tmp_path, 0, "ina219", {"power1_input": "1000000"})
    source, notes = open_energy_source("auto", tmp_path)
    assert source.info.name == "rapl"
    assert notes == []


def test_auto_falls_back_past_denied_rapl(shared_tmp, no_vcgencmd):
    add_rapl_zone(shared_tmp, "intel-rapl:0", "package-0", 0, energy_mode=0o400)
    add_hwmon(shared_tmp, 0, "ina219", {"power1_input": "1000000"})
    with unprivileged():
        source, notes = open_energy_source("auto", shared_tmp)
    assert source.info.name == "hwmon"
    assert len(notes) == 1
    assert notes[0].startswith("rapl: RAPL counter ")


def test_auto_falls_back_to_pmic(tmp_path, monkeypatch):
    write_vcgencmd(tmp_path / "bin", pi5_pmic_output())
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    source, notes = open_energy_source("auto", tmp_path / "sys")
    assert source.info.name == "pmic"
    assert [note.split(":")[0] for note in notes] == ["rapl", "hwmon"]


def test_auto_ends_with_estimate(tmp_path, monkeypatch):
    add_hwmon(tmp_path / "sys", 0, "ina219", {"power1_input": "oops"})
    write_vcgencmd(tmp_path / "bin", "", status=1, stderr="failed")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    source, notes = open_energy_source("auto", tmp_path / "sys", device_class="raspberry-pi-5")
    assert source.info.name == "estimate"
    assert source.info.label.startswith("estimated: ")
    assert [note.split(":")[0] for note in notes] == ["rapl", "hwmon", "pmic"]
    assert "not an integer" in notes[1]
    assert "exit status 1" in notes[2]


def test_named_source_failure_raises(tmp_path):
    with pytest.raises(SensorError, match="no RAPL zones"):
        open_energy_source("rapl", tmp_path)


# -- sampler --------------------------------------------------------------------------------


class ConstantPower(EnergySource):
    """A power sensor that always reads the same number of watts."""

    cumulative = False

    def __init__(self, watts: float) -> None:
        self.watts = watts
        self.info = SourceInfo("hwmon", True, "test sensor")

    def read(self) -> float:
        return self.watts


class FailingSource(ConstantPower):
    def read(self) -> float:
        raise SensorError("cannot read test sensor (Input/output error)")


def test_sampler_integrates_power_over_a_run():
    with PowerSampler(ConstantPower(2.0), interval_s=0.01) as sampler:
        start = sampler.mark()
        time.sleep(0.1)
        end = sampler.mark()
    assert start is not None and end is not None
    energy = sampler.energy_j(start, end)
    assert energy == pytest.approx(2.0 * (end.time_s - start.time_s))
    assert len(sampler.samples) >= 5  # the thread sampled between the marks


def test_sampler_power_series_of_a_counter(tmp_path):
    source = CpuTimeEstimate("other", watts_per_core=3.0)
    with PowerSampler(source, interval_s=0.01) as sampler:
        deadline = time.perf_counter() + 0.1
        while time.perf_counter() < deadline:
            pass
    times, watts = sampler.power_series()
    assert len(times) >= 3
    assert all(0.0 <= w <= 3.0 * 1.5 for w in watts)  # one busy core, plus the sampler


def test_sampler_survives_failing_reads():
    with PowerSampler(FailingSource(1.0), interval_s=0.01) as sampler:
        start = sampler.mark()
        time.sleep(0.05)
    assert start is None
    assert sampler.read_errors >= 2
    assert sampler.energy_j(start, None) is None
