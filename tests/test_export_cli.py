"""elr-export end to end: a bundle from a real checkpoint, bad input, and atomic writes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from export_helpers import entropy_patching, tiny_model, torch_threads, train_briefly

from elr_export import export_cli, parity
from elr_export.bundle import BundleError, check_target, commit_bundle, create_staging
from elr_export.checkpoint import load_checkpoint, save_checkpoint
from elr_export.reference import generate
from elr_runtime.bundle import file_sha256, load_bundle
from elr_runtime.graph_io import (
    BUNDLE_FORMAT_VERSION,
    GRAPH_NAMES,
    MANIFEST_NAME,
    SPECIAL_IDS,
    TABLE_NAME,
    graph_filename,
)

N_LATENT_STEPS = 2
MANIFEST_KEYS = {"format_version", "model", "patcher", "table", "n_latent_steps", "special_ids",
                 "graphs", "io", "caches", "quantization", "files", "parity", "opset",
                 "created_by"}


def run_cli(argv: list[str]) -> SimpleNamespace:
    """Run elr-export in this process; return its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = export_cli.main([str(a) for a in argv])
    return SimpleNamespace(code=code, stdout=out.getvalue(), stderr=err.getvalue())


def assert_one_line_error(result: SimpleNamespace, fragment: str, code: int = 1) -> None:
    assert result.code == code
    assert "Traceback" not in result.stderr
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("elr-export: error: ")
    assert fragment in last


def tree_snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, text_dir: Path) -> Path:
    """An entropy-patched tiny model, trained for a few steps and saved by save_checkpoint."""
    text = (text_dir / "tinyshakespeare.txt").read_bytes()[:200_000]
    rule, table, settings = entropy_patching(text)
    model = train_briefly(tiny_model("entropy"), rule, text, steps=150)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny"
    save_checkpoint(path, model, table, settings)
    return path


@pytest.fixture(scope="module")
def eval_text(tmp_path_factory, text_dir: Path) -> Path:
    data = (text_dir / "tinyshakespeare.txt").read_bytes()
    path = tmp_path_factory.mktemp("eval") / "held_out.txt"
    path.write_bytes(data[len(data) * 9 // 10:][:3000])  # from the last 10 %, never trained on
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint: Path, eval_text: Path) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    result = run_cli([checkpoint, "--out", out, "--latent-steps", N_LATENT_STEPS,
                      "--eval-text", eval_text])
    manifest = json.loads((out / MANIFEST_NAME).read_text()) if out.is_dir() else None
    return SimpleNamespace(result=result, out=out, manifest=manifest)


# -- a successful export ----------------------------------------------------------------------


def test_export_exits_zero(exported):
    assert exported.result.code == 0, exported.result.stderr


def test_summary_lists_sizes_parity_and_gate(exported):
    summary = exported.result.stdout
    assert graph_filename("decoder_step", "int8") in summary
    assert "int8 is" in summary
    assert "x fp32" in summary
    assert "greedy 64 bytes equal" in summary
    assert "gate passed" in summary


def test_progress_lines_on_stderr(exported):
    lines = [ln for ln in exported.result.stderr.splitlines() if ln.startswith("[")]
    total = export_cli.count_steps(export_cli.ExportOptions(
        checkpoint=Path("c"), out=Path("o"), n_latent_steps=1, eval_text=Path("e")))
    assert len(lines) == total
    assert lines[-1].startswith(f"[{total}/{total}] write bundle")


def test_manifest_has_shared_keys(exported):
    assert set(exported.manifest) >= MANIFEST_KEYS
    assert exported.manifest["format_version"] == BUNDLE_FORMAT_VERSION
    assert exported.manifest["special_ids"] == SPECIAL_IDS
    assert exported.manifest["n_latent_steps"] == N_LATENT_STEPS
    assert exported.manifest["created_by"].startswith("elr-export ")


def test_manifest_sha256_matches_files(exported):
    files = exported.manifest["files"]
    on_disk = {p.name for p in exported.out.iterdir()} - {MANIFEST_NAME}
    assert set(files) == on_disk
    for name, digest in files.items():
        assert file_sha256(exported.out / name) == digest, name


def test_manifest_records_parity_figures(exported):
    figures = exported.manifest["parity"]
    assert figures["fp32_tolerance"] == parity.FP32_TOLERANCE
    assert figures["latent_steps_in_graph"] == N_LATENT_STEPS
    for graph in GRAPH_NAMES:
        assert figures["graphs"][graph]["max_abs_diff"] <= parity.FP32_TOLERANCE, graph
    assert figures["loop"]["greedy_equal"]
    assert figures["int8_gate"]["passed"]
    assert figures["int8_gate"]["top1_agreement"] >= parity.INT8_MIN_TOP1_AGREEMENT


def test_bundle_ships_table_and_patcher(exported, checkpoint):
    assert exported.manifest["table"] == TABLE_NAME
    assert (exported.out / TABLE_NAME).read_bytes() == (checkpoint / TABLE_NAME).read_bytes()
    assert exported.manifest["patcher"] == load_checkpoint(checkpoint).patcher_settings


def test_bundle_loads_in_runtime(exported):
    bundle = load_bundle(exported.out)
    assert bundle.precisions == ("fp32", "int8")
    assert bundle.n_latent_steps == N_LATENT_STEPS


def test_runtime_greedy_256_bytes_match_reference(exported, checkpoint, text_dir):
    generate_module = pytest.importorskip("elr_runtime.generate")
    ckpt = load_checkpoint(checkpoint)
    prompt = (text_dir / "tinyshakespeare.txt").read_bytes()[-2000:-1960]
    generator = generate_module.Generator(exported.out, precision="fp32")
    from_runtime = generator.generate(prompt, max_bytes=256)
    from_torch = generate(ckpt.model, ckpt.patch_rule(), prompt, 256)
    assert len(from_torch) == 256
    assert from_runtime == from_torch


# -- precisions and the int8 gate -------------------------------------------------------------


def test_fp32_only_without_eval_text(checkpoint, tmp_path):
    out = tmp_path / "fp32"
    result = run_cli([checkpoint, "--out", out, "--latent-steps", 1, "--precision", "fp32",
                      "--exporter", "torchscript"])
    assert result.code == 0, result.stderr
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert {p for files in manifest["graphs"].values() for p in files} == {"fp32"}
    assert manifest["quantization"] is None
    assert manifest["parity"]["int8"] is None
    assert not list(out.glob("*.int8.onnx"))


def test_failed_int8_gate_writes_nothing(checkpoint, eval_text, tmp_path, monkeypatch):
    monkeypatch.setattr(parity, "INT8_MIN_TOP1_AGREEMENT", 1.01)
    out = tmp_path / "gate"
    result = run_cli([checkpoint, "--out", out, "--latent-steps", 1, "--eval-text", eval_text,
                      "--exporter", "torchscript"])
    assert_one_line_error(result, "--keep-failed-int8")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_keep_failed_int8_writes_int8_bundle(checkpoint, eval_text, tmp_path, monkeypatch):
    monkeypatch.setattr(parity, "INT8_MIN_TOP1_AGREEMENT", 1.01)
    out = tmp_path / "kept"
    result = run_cli([checkpoint, "--out", out, "--latent-steps", 1, "--eval-text", eval_text,
                      "--precision", "int8", "--keep-failed-int8", "--exporter", "torchscript"])
    assert result.code == 0, result.stderr
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["parity"]["int8_gate"]["passed"] is False
    assert "miss the accuracy gate" in result.stdout
    assert {p for files in manifest["graphs"].values() for p in files} == {"int8"}
    assert not list(out.glob("*.fp32.onnx"))


# -- bad input --------------------------------------------------------------------------------


def corrupt_copy(checkpoint: Path, tmp_path: Path, damage: str) -> Path:
    """Copy `checkpoint` and break the copy in the way `damage` names."""
    path = tmp_path / f"ckpt_{damage}"
    shutil.copytree(checkpoint, path)
    config_file = path / "config.json"
    if damage == "no_config":
        config_file.unlink()
    elif damage == "bad_json":
        config_file.write_text("{not json")
    elif damage == "other_version":
        config = json.loads(config_file.read_text())
        config["format_version"] = 99
        config_file.write_text(json.dumps(config))
    elif damage == "bad_weights":
        (path / "model.safetensors").write_bytes(b"\x00" * 64)
    elif damage == "no_table":
        (path / TABLE_NAME).unlink()
    return path


@pytest.mark.parametrize(("damage", "fragment"), [
    ("missing", "not found"),
    ("no_config", "has no config.json"),
    ("bad_json", "not valid JSON"),
    ("other_version", "format version 99"),
    ("bad_weights", "corrupt"),
    ("no_table", "frequency table"),
])
def test_bad_checkpoint_rejected(checkpoint, tmp_path, damage, fragment):
    if damage == "missing":
        path = tmp_path / "missing"
    else:
        path = corrupt_copy(checkpoint, tmp_path, damage)
    out = tmp_path / "bundle"
    result = run_cli([path, "--out", out, "--latent-steps", 1, "--precision", "fp32"])
    assert_one_line_error(result, fragment)
    assert not out.exists()


@pytest.mark.parametrize(("args", "fragment", "code"), [
    # invalid values exit 2, like argparse's usage errors; an unusable file exits 1
    (["--latent-steps", 0], "--latent-steps 0 is out of range", 2),
    (["--latent-steps", -2], "--latent-steps -2 is out of range", 2),
    (["--latent-steps", 100_000], "--latent-steps 100000 is out of range", 2),
    (["--latent-steps", 1, "--opset", 9], "--opset 9 is not supported", 2),
    (["--latent-steps", 1, "--precision", "int8"], "needs --eval-text", 2),
    (["--latent-steps", 1, "--eval-text", "/nonexistent/eval.txt"], "not found", 1),
    (["--latent-steps", 1, "--eval-bytes", 10], "--eval-bytes 10 is too small", 2),
])
def test_bad_option_rejected(checkpoint, tmp_path, args, fragment, code):
    out = tmp_path / "bundle"
    result = run_cli([checkpoint, "--out", out, *args])
    assert_one_line_error(result, fragment, code)
    assert not out.exists()


def test_latent_count_falls_back_with_note(checkpoint, tmp_path):
    out = tmp_path / "bundle"
    result = run_cli([checkpoint, "--out", out, "--precision", "fp32",
                      "--exporter", "torchscript"])
    assert result.code == 0, result.stderr
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["n_latent_steps"] == export_cli.DEFAULT_LATENT_STEPS
    assert manifest["parity"]["latent_steps_in_graph"] == export_cli.DEFAULT_LATENT_STEPS
    assert "records no n_latent_steps" in result.stdout


def test_empty_eval_text_rejected(checkpoint, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    result = run_cli([checkpoint, "--out", tmp_path / "bundle", "--latent-steps", 1,
                      "--eval-text", empty])
    assert_one_line_error(result, "has 0 bytes")


def test_non_bundle_directory_left_alone(checkpoint, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    result = run_cli([checkpoint, "--out", out, "--latent-steps", 1, "--precision", "fp32"])
    assert_one_line_error(result, "no bundle manifest.json")
    assert tree_snapshot(out) == {"thesis.txt": b"do not delete"}


def test_file_as_out_left_alone(checkpoint, tmp_path):
    out = tmp_path / "bundle"
    out.write_text("a file")
    result = run_cli([checkpoint, "--out", out, "--latent-steps", 1, "--precision", "fp32"])
    assert_one_line_error(result, "is not a directory")
    assert out.read_text() == "a file"


def test_unwritable_out_rejected(checkpoint, tmp_path, monkeypatch):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o500)
    if os.geteuid() == 0:
        # root ignores directory modes, so fail the way a normal user's mkdtemp would
        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(tempfile, "mkdtemp", denied)
    try:
        result = run_cli([checkpoint, "--out", parent / "bundle", "--latent-steps", 1,
                          "--precision", "fp32"])
    finally:
        parent.chmod(0o700)
    assert_one_line_error(result, "Permission denied")
    assert list(parent.iterdir()) == []


def test_bad_input_from_console_script_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "elr_export.export_cli", str(tmp_path / "missing"), "--out",
         str(tmp_path / "bundle"), "--latent-steps", "1", "--precision", "fp32"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("elr-export: error: checkpoint")


# -- atomic writes ----------------------------------------------------------------------------


def test_interrupted_export_keeps_existing_bundle(exported, checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    shutil.copytree(exported.out, out)
    before = tree_snapshot(out)
    real_export = export_cli.export_graph
    calls = []

    def export_then_interrupt(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_export(*args, **kwargs)

    monkeypatch.setattr(export_cli, "export_graph", export_then_interrupt)
    result = run_cli([checkpoint, "--out", out, "--latent-steps", 1, "--precision", "fp32",
                      "--exporter", "torchscript"])
    assert result.code == 130
    assert "was not changed" in result.stderr
    assert tree_snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_commit_replaces_existing_bundle(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / MANIFEST_NAME).write_text(json.dumps({"format_version": 1}))
    (target / "old.onnx").write_bytes(b"old")
    staging = create_staging(target)
    (staging / MANIFEST_NAME).write_text(json.dumps({"format_version": 1, "new": True}))
    commit_bundle(staging, target)
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST_NAME]
    assert json.loads((target / MANIFEST_NAME).read_text())["new"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_commit_into_empty_directory(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    staging = create_staging(target)
    (staging / MANIFEST_NAME).write_text(json.dumps({"format_version": 1}))
    commit_bundle(staging, target)
    assert (target / MANIFEST_NAME).is_file()


def test_staging_gets_normal_permissions(tmp_path):
    staging = create_staging(tmp_path / "bundle")
    mask = os.umask(0)
    os.umask(mask)
    assert staging.stat().st_mode & 0o777 == 0o777 & ~mask


def test_check_target_rejects_non_bundle(tmp_path):
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(BundleError, match="no bundle manifest.json"):
        check_target(tmp_path)

