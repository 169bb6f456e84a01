"""elr-profile end to end on a real tiny bundle: the JSON schema, the figures, CSV, plot,
two-bundle comparison, a fake RAPL tree, and the tools/profile script."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from profile_fakes import add_rapl_zone
from runtime_bundles import TinyRun, shared_bundle

from elr_profile import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
# NOTE: an editable install made with `-Ceditable.rebuild=true` prints a "Running cmake"
# line on stdout when it checks the compiled patcher; this variable silences it.
ENV = {**os.environ, "SKBUILD_EDITABLE_VERBOSE": "0"}
SHORT = ("--runs", "2", "--warmup", "1", "--max-bytes", "24", "--idle-s", "0")
METRICS = ("time_to_first_byte_ms_p50", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
           "bytes_per_s", "global_steps_per_byte", "generated_bytes", "cpu_s_per_run",
           "cpu_percent", "peak_rss_mb", "rss_after_load_mb", "load_s", "energy_per_byte_mj",
           "power_w")


@pytest.fixture(scope="module")
def run(tmp_path_factory, text_dir: Path) -> TinyRun:
    return shared_bundle(tmp_path_factory, text_dir)


@pytest.fixture(scope="module")
def sweep(run: TinyRun, tmp_path_factory, text_dir: Path) -> dict:
    """One profile over both precisions and two prompt lengths, with every output."""
    out = tmp_path_factory.mktemp("profile")
    args = [str(run.bundle), *SHORT, "--precision", "all", "--prompt-bytes", "16,48",
            "--text", str(text_dir / "tinyshakespeare.txt"), "--json", str(out / "p.json"),
            "--csv", str(out / "steps.csv"), "--sample-interval-ms", "5"]
    if _has_matplotlib():
        args += ["--plot", str(out / "p.png")]
    status = cli.main(args)
    assert status == cli.EXIT_OK
    return {"dir": out, "doc": json.loads((out / "p.json").read_text())}


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_json_has_machine_and_bundle(sweep, run):
    doc = sweep["doc"]
    assert doc["schema"] == "elr-profile/1"
    machine = doc["machine"]
    for key in ("cpu_model", "logical_cores", "isa_features", "onnxruntime", "device_class"):
        assert key in machine, key
    assert machine["logical_cores"] >= 1
    bundle = doc["bundles"]["a"]
    assert bundle["path"] == str(run.bundle)
    assert len(bundle["id"]) == 16
    assert bundle["precisions"] == ["fp32", "int8"]
    assert doc["energy_source"]["label"].startswith(("measured: ", "estimated: "))


def test_json_has_one_result_per_config(sweep):
    configs = [(r["config"]["precision"], r["config"]["prompt_bytes"])
               for r in sweep["doc"]["results"]]
    assert configs == [("fp32", 16), ("fp32", 48), ("int8", 16), ("int8", 48)]
    for result in sweep["doc"]["results"]:
        assert set(result["metrics"]) >= set(METRICS)
        assert len(result["runs"]) == 2
        assert all(run["prompt_bytes"] == result["config"]["prompt_bytes"]
                   for run in result["runs"])


def test_percentiles_are_ordered_and_positive(sweep):
    for result in sweep["doc"]["results"]:
        metrics = result["metrics"]
        p50, p90, p99 = (metrics[f"latency_ms_p{p}"]["value"] for p in (50, 90, 99))
        assert 0 < p50 <= p90 <= p99
        assert metrics["time_to_first_byte_ms_p50"]["value"] > 0
        assert metrics["bytes_per_s"]["value"] > 0


def test_figures_are_plausible(sweep):
    for result in sweep["doc"]["results"]:
        metrics = result["metrics"]
        assert 0 < metrics["global_steps_per_byte"]["value"] <= 1
        assert metrics["peak_rss_mb"]["value"] >= metrics["rss_after_load_mb"]["value"] > 0
        assert metrics["cpu_s_per_run"]["value"] > 0
        assert metrics["energy_per_byte_mj"]["value"] > 0
        assert metrics["energy_per_byte_mj"]["source"] == sweep["doc"]["energy_source"]["label"]


def test_every_figure_has_unit_and_source(sweep):
    for result in sweep["doc"]["results"]:
        for name, entry in result["metrics"].items():
            assert set(entry) == {"value", "unit", "source"}, name


def test_csv_has_a_row_per_byte(sweep):
    with (sweep["dir"] / "steps.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    generated = sum(r["metrics"]["generated_bytes"]["value"] for r in sweep["doc"]["results"])
    assert len(rows) == generated
    assert rows[0]["latency_ms"] == ""  # the first byte of a run has no predecessor
    assert float(rows[1]["latency_ms"]) > 0
    times = [float(row["time_s"]) for row in rows]
    assert times == sorted(times)
    assert {row["global_steps"] for row in rows} <= {"0", "1", "2"}


def test_plot_is_a_png(sweep):
    if not _has_matplotlib():
        pytest.skip("matplotlib is not installed (the 'plot' extra)")
    assert (sweep["dir"] / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_two_bundles(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run.bundle, copy)
    status = cli.main([str(run.bundle), "--compare", str(copy), *SHORT, "--precision", "fp32",
                       "--text", str(Path(__file__)), "--prompt-bytes", "24",
                       "--json", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert status == cli.EXIT_OK
    doc = json.loads((tmp_path / "c.json").read_text())
    assert [r["config"]["bundle"] for r in doc["results"]] == ["a", "b"]
    assert doc["bundles"]["a"]["id"] == doc["bundles"]["b"]["id"]  # same files, same id
    ratios = doc["comparison"][0]["ratios_b_over_a"]
    assert ratios["bytes_per_s"] > 0
    assert ratios["global_steps_per_byte"] == pytest.approx(1.0)  # same model, same text
    assert any(line.startswith("b/a ") for line in out.splitlines())


def test_fake_rapl_is_measured(run, tmp_path, capsys):
    sysfs = tmp_path / "sys"
    add_rapl_zone(sysfs, "intel-rapl:0", "package-0", 1_000_000)
    status = cli.main([str(run.bundle), *SHORT[:-2], "--idle-s", "0.05", "--sysfs-root",
                       str(sysfs), "--text", str(Path(__file__)), "--json", "-"])
    assert status == cli.EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["energy_source"]["name"] == "rapl"
    metrics = doc["results"][0]["metrics"]
    # the fake counter does not change, so the package used no energy
    assert metrics["energy_per_byte_mj"]["value"] == 0.0
    assert metrics["energy_per_byte_mj"]["source"].startswith("measured: RAPL package-0")
    assert metrics["idle_power_w"]["value"] == 0.0


def test_named_source_that_fails_is_an_error(run, tmp_path, capsys):
    status = cli.main([str(run.bundle), *SHORT, "--energy-source", "rapl", "--sysfs-root",
                       str(tmp_path), "--text", str(Path(__file__))])
    err = capsys.readouterr().err
    assert status == cli.EXIT_ERROR
    assert err.startswith("elr-profile: error: energy source rapl: no RAPL zones under ")
    assert err.count("\n") == 1


def test_tools_profile_script(run):
    command = [sys.executable, str(REPO_ROOT / "tools" / "profile"), str(run.bundle),
               "--runs", "1", "--warmup", "0", "--max-bytes", "8", "--idle-s", "0",
               "--text", str(Path(__file__)), "--json", "-", "--quiet"]
    result = subprocess.run(command, capture_output=True, env=ENV, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["results"][0]["metrics"]["generated_bytes"]["value"] == 8


def test_profile_never_imports_torch(run):
    code = ("import sys\n"
            "from elr_profile import cli, energy, machine, measure, prompts, report, sampler\n"
            f"status = cli.main([{str(run.bundle)!r}, '--runs', '1', '--warmup', '0', "
            f"'--max-bytes', '4', '--idle-s', '0', '--text', {__file__!r}, '--quiet'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "sys.exit(status)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=ENV,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr

