"""The profiler's prompts, machine information, figures and bad-input handling, without a
model: every case here fails or finishes before a bundle would be loaded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from elr_profile import cli, report
from elr_profile.energy import CpuTimeEstimate, SourceInfo
from elr_profile.machine import cpu_model, device_class, isa_features, parse_cpuinfo
from elr_profile.measure import Config, ConfigResult, Run, Settings
from elr_profile.prompts import (
    PromptError,
    prompts_from_text,
    read_prompt_file,
    split_prompts,
)

PI5_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

Revision\t: d04170
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


# -- prompts --------------------------------------------------------------------------------


def test_prompts_one_per_line():
    assert split_prompts(b"first prompt\nsecond\n\xff raw bytes\n") == [
        b"first prompt", b"second", b"\xff raw bytes"]


def test_prompts_separated_by_blank_lines():
    data = b"ROMEO:\nBut soft!\n\n  \nJULIET:\nAy me.\r\n\r\nthird\n"
    assert split_prompts(data) == [b"ROMEO:\nBut soft!", b"JULIET:\nAy me.", b"third"]


def test_empty_prompt_file_is_rejected(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n  \n\n")
    with pytest.raises(PromptError, match="contains no prompts"):
        read_prompt_file(path)


def test_missing_prompt_file_is_rejected(tmp_path):
    with pytest.raises(PromptError, match="prompt file not found"):
        read_prompt_file(tmp_path / "absent.txt")


def test_prompts_cut_from_text_at_line_starts(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(b"".join(f"line {i:03d} of the text\n".encode() for i in range(100)))
    prompts = prompts_from_text(path, count=4, prompt_bytes=30)
    assert len(prompts) == 4
    assert all(len(prompt) == 30 for prompt in prompts)
    assert all(prompt.startswith(b"line ") for prompt in prompts)
    assert len(set(prompts)) == 4


def test_prompts_cut_end_on_whole_characters(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("日本語の文章です\n" * 10, encoding="utf-8")
    for length in range(4, 20):
        for prompt in prompts_from_text(path, count=3, prompt_bytes=length):
            prompt.decode("utf-8")  # raises on a cut character
            assert len(prompt) > length - 3


def test_text_shorter_than_prompt_is_rejected(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("short\n")
    with pytest.raises(PromptError, match="fewer than the 64-byte prompts"):
        prompts_from_text(path, count=1, prompt_bytes=64)


# -- machine --------------------------------------------------------------------------------


def test_pi5_cpuinfo_names_core_and_features():
    fields = parse_cpuinfo(PI5_CPUINFO)
    assert cpu_model(fields, "Raspberry Pi 5 Model B Rev 1.0") == \
        "Raspberry Pi 5 Model B Rev 1.0, Cortex-A76"
    assert isa_features(fields) == ["neon", "dotprod", "fp16"]


def test_x86_flags_name_vnni():
    fields = parse_cpuinfo("model name\t: Example CPU\nflags\t\t: sse4_2 avx2 fma avx512f "
                           "avx512_vnni\n")
    assert cpu_model(fields, None) == "Example CPU"
    assert isa_features(fields) == ["sse4.2", "avx2", "fma", "avx512f", "avx512-vnni"]


@pytest.mark.parametrize(("board", "machine", "expected"), [
    ("Raspberry Pi 5 Model B Rev 1.0", "aarch64", "raspberry-pi-5"),
    ("Raspberry Pi 4 Model B Rev 1.4", "aarch64", "raspberry-pi-4"),
    ("Raspberry Pi Compute Module 4 Rev 1.0", "aarch64", "raspberry-pi-4"),
    ("Rockchip RK3588 board", "aarch64", "arm64"),
    (None, "x86_64", "x86-64"),
    (None, "riscv64", "other"),
])
def test_device_class_from_board(board, machine, expected):
    assert device_class(board, machine) == expected


# -- figures --------------------------------------------------------------------------------


def fake_result(energy_j: float | None) -> ConfigResult:
    """A configuration with two runs of 5 bytes each, 1 ms apart, and one global step.

    The last byte follows 0.01 ms after the fourth, because a run that stops at max_bytes
    runs no model step after its last byte.
    """
    runs = []
    for index in range(2):
        start = 10.0 * index
        runs.append(Run(index=index, prompt_bytes=8,
                        byte_times_s=start + 0.004 + np.array([0, 1, 2, 3, 3.01]) * 1e-3,
                        global_steps=np.array([3, 3, 4, 4, 4]), prompt_global_steps=3,
                        sampled_first_byte_s=0.003, decode_s=0.004, start_s=start,
                        end_s=start + 0.01,
                        cpu_s=0.005, energy_j=energy_j, stop_reason="max_bytes"))
    config = Config("a", Path("bundle"), "int8", 1, 64)
    return ConfigResult(config=config, bundle_id="0123", load_s=0.1, rss_after_load_mb=50.0,
                        peak_rss_mb=60.0, peak_rss_source="VmHWM since the bundle was loaded",
                        runs=runs, idle_power_w=1.0)


def test_every_figure_carries_a_source():
    metrics = report.summarize(fake_result(0.02), CpuTimeEstimate("raspberry-pi-5").info)
    for name, entry in metrics.items():
        assert set(entry) == {"value", "unit", "source"}, name
        assert entry["source"], name


def test_estimated_energy_is_labelled_estimated():
    metrics = report.summarize(fake_result(0.02), CpuTimeEstimate("raspberry-pi-5").info)
    assert metrics["energy_per_byte_mj"]["source"].startswith("estimated: ")
    assert "1 W per busy core" in metrics["energy_per_byte_mj"]["source"]
    assert metrics["energy_per_byte_mj"]["value"] == pytest.approx(0.04 / 10 * 1e3)
    assert "idle_power_w" not in metrics  # the estimate excludes idle power already


def test_measured_energy_subtracts_idle():
    info = SourceInfo("rapl", True, "RAPL package-0")
    metrics = report.summarize(fake_result(0.02), info)
    assert metrics["energy_per_byte_mj"]["source"] == "measured: RAPL package-0"
    assert metrics["idle_power_w"]["value"] == 1.0
    # 0.04 J over 0.02 s, minus 1 W x 0.02 s, over 10 bytes
    assert metrics["energy_per_byte_above_idle_mj"]["value"] == pytest.approx(2.0)


def test_pooled_figures_of_fake_runs():
    metrics = report.summarize(fake_result(None), SourceInfo("rapl", True, "RAPL"))
    assert metrics["time_to_first_byte_ms_p50"]["value"] == pytest.approx(4.0)
    assert metrics["latency_ms_p50"]["value"] == pytest.approx(1.0)
    assert metrics["latency_ms_p99"]["value"] == pytest.approx(1.0)  # the last byte left out
    assert metrics["bytes_per_s"]["value"] == pytest.approx(1000.0)
    assert metrics["global_steps_per_byte"]["value"] == pytest.approx(0.25)
    assert metrics["cpu_percent"]["value"] == pytest.approx(50.0)
    assert metrics["energy_per_byte_mj"]["value"] is None  # no reading, no figure


def test_ratios_divide_b_by_a():
    a = {"bytes_per_s": {"value": 100.0}, "energy_per_byte_mj": {"value": None}}
    b = {"bytes_per_s": {"value": 150.0}, "energy_per_byte_mj": {"value": 2.0}}
    assert report.ratios(a, b) == {"bytes_per_s": 1.5, "energy_per_byte_mj": None}


def test_settings_reject_zero_runs():
    with pytest.raises(ValueError, match="runs=0"):
        Settings(runs=0)


# -- command line: bad input ----------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_missing_bundle(capsys, tmp_path):
    status, out, err = run_cli(capsys, str(tmp_path / "absent"), "--text", __file__)
    assert status == cli.EXIT_ERROR
    assert err.startswith("elr-profile: error: bundle not found: ")
    assert err.count("\n") == 1
    assert out == ""


def test_cli_zero_runs(capsys, tmp_path):
    status, _, err = run_cli(capsys, str(tmp_path), "--runs", "0")
    assert status == cli.EXIT_USAGE
    assert err == "elr-profile: error: --runs 0 must be at least 1\n"


def test_cli_empty_prompt_file(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n\n")
    status, _, err = run_cli(capsys, str(tmp_path), "--prompts", str(prompts))
    assert status == cli.EXIT_USAGE
    assert "contains no prompts" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(("args", "message"), [
    (("--threads", "0"), "--threads values must be >= 1, got 0"),
    (("--threads", "two"), "--threads must be a comma list of integers"),
    (("--max-bytes", "1"), "--max-bytes 1 must be at least 2"),
    (("--sample-interval-ms", "0"), "--sample-interval-ms must be > 0"),
    (("--watts-per-core", "-1"), "--watts-per-core must be > 0"),
    (("--energy-source", "battery"), "invalid choice: 'battery'"),
    (("--json", "/no/such/dir/out.json"), "directory /no/such/dir does not exist"),
])
def test_cli_invalid_options(capsys, tmp_path, args, message):
    status, _, err = run_cli(capsys, str(tmp_path), "--text", __file__, *args)
    assert status == cli.EXIT_USAGE
    assert message in err
    assert "Traceback" not in err


def test_cli_prompt_bytes_with_prompt_file(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    status, _, err = run_cli(capsys, str(tmp_path), "--prompts", str(prompts),
                             "--prompt-bytes", "16")
    assert status == cli.EXIT_USAGE
    assert "used as written" in err


def test_cli_plot_without_matplotlib(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    status, _, err = run_cli(capsys, str(tmp_path), "--text", __file__, "--plot",
                             str(tmp_path / "profile.png"))
    assert status == cli.EXIT_USAGE
    assert "--plot needs matplotlib, which is not installed: pip install 'elr-lrt[plot]'" \
        in err
