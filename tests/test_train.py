"""elr-train and elr-eval end to end on real text with tiny models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elr_export.checkpoint import load_checkpoint
from elr_export.evaluate import main as eval_main
from elr_export.train_cli import main as train_main

TINY_MODEL = ["--d-local", "32", "--n-local-heads", "2", "--d-global", "64",
              "--n-global-heads", "2", "--n-global-layers", "1", "--ngram-buckets", "256",
              "--seq-len", "64", "--batch-size", "8", "--warmup-steps", "5", "--lr", "3e-3",
              "--no-bf16", "--threads", "1"]


@pytest.fixture(scope="module")
def small_text(tmp_path_factory, text_dir: Path) -> Path:
    # 150 KB of Shakespeare keeps the table build, calibration and training fast
    path = tmp_path_factory.mktemp("data") / "shakespeare_head.txt"
    path.write_bytes((text_dir / "tinyshakespeare.txt").read_bytes()[:150_000])
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_text: Path) -> Path:
    out = tmp_path_factory.mktemp("run") / "ckpt"
    code = train_main([str(small_text), "--out", str(out), "--max-steps", "60",
                       "--eval-interval", "30", "--checkpoint-interval", "30", *TINY_MODEL])
    assert code == 0
    return out


def test_training_writes_checkpoint(trained: Path):
    names = {p.name for p in trained.iterdir()}
    assert {"model.safetensors", "config.json", "frequency_table.elrt",
            "optimizer.safetensors"} <= names
    assert not any(name.endswith(".pt") or name.endswith(".pkl") for name in names)


def test_training_keeps_best_checkpoint(trained: Path):
    best = load_checkpoint(trained.with_name(trained.name + "-best")).training_state["run"]
    assert best["step"] in (30, 60)
    assert best["best_val_bpb"] == best["last_val_bpb"]


def test_training_lowers_validation_bpb(trained: Path):
    state = load_checkpoint(trained).training_state
    # an untrained model scores about log2(264) = 8.04 bits per byte
    assert state["run"]["last_val_bpb"] < 5.0
    assert state["run"]["step"] == 60


def test_entropy_patches_near_target(trained: Path):
    state = load_checkpoint(trained).training_state
    assert 3.5 < state["mean_patch_length_train"] < 5.5


def test_resume_continues_from_step(trained: Path, small_text: Path, tmp_path: Path):
    copy = tmp_path / "ckpt"
    subprocess.run(["cp", "-r", str(trained), str(copy)], check=True)
    code = train_main([str(small_text), "--out", str(copy), "--resume", "--max-steps", "70",
                       "--eval-interval", "30", *TINY_MODEL])
    assert code == 0
    assert load_checkpoint(copy).training_state["run"]["step"] == 70


def test_eval_reports_bpb_and_flops(trained: Path, small_text: Path, capsys):
    assert eval_main([str(trained), str(small_text), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 < result["bits_per_byte"] < 6
    assert result["mean_patch_length"] > 1
    assert result["flops_per_byte"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--batch-size", "0"], "--batch-size 0 must be at least 1"),
    (["--batch-size", "-1"], "--batch-size -1 must be at least 1"),
    (["--seq-len", "100000"], "--seq-len 100000 must be between 2 and"),
    (["--seq-len", "0"], "--seq-len 0 must be between 2 and"),
])
def test_eval_rejects_bad_sizes(trained: Path, small_text: Path, capsys, args, message):
    assert eval_main([str(trained), str(small_text), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("elr-eval: error: ")
    assert message in err


def test_binary_input_trains(tmp_path: Path):
    data = tmp_path / "random.bin"
    data.write_bytes(os.urandom(40_000) + bytes(range(256)) * 20)
    code = train_main([str(data), "--out", str(tmp_path / "ckpt"), "--max-steps", "3",
                       "--eval-interval", "3", *TINY_MODEL])
    assert code == 0


@pytest.mark.parametrize("case", ["missing", "empty", "empty_dir", "bad_config", "bad_fraction",
                                  "zero_threads", "huge_window", "out_is_file"])
def test_bad_input_one_line_error(case: str, tmp_path: Path, small_text: Path, capsys):
    args = {
        "missing": [str(tmp_path / "nope.txt")],
        "empty": [str(tmp_path / "empty.txt")],
        "empty_dir": [str(tmp_path / "emptydir")],
        "bad_config": [str(small_text), "--d-global", "30"],
        "bad_fraction": [str(small_text), "--val-fraction", "1.5"],
        "zero_threads": [str(small_text), "--threads", "0"],
        "huge_window": [str(small_text), "--seq-len", "100000"],
        "out_is_file": [str(small_text)],
    }[case]
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "emptydir").mkdir()
    out = small_text if case == "out_is_file" else tmp_path / "out"
    before = small_text.read_bytes()
    code = train_main([*TINY_MODEL, *args, "--out", str(out), "--max-steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("elr-train: error:")
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists()
    assert small_text.read_bytes() == before


def test_existing_checkpoint_not_overwritten(trained: Path, small_text: Path, capsys):
    before = (trained / "model.safetensors").read_bytes()
    code = train_main([str(small_text), "--out", str(trained), "--max-steps", "2", *TINY_MODEL])
    assert code == 2
    assert "--resume" in capsys.readouterr().err
    assert (trained / "model.safetensors").read_bytes() == before


def test_corrupt_checkpoint_on_resume(trained: Path, small_text: Path, tmp_path: Path, capsys):
    copy = tmp_path / "ckpt"
    subprocess.run(["cp", "-r", str(trained), str(copy)], check=True)
    (copy / "model.safetensors").write_bytes(b"not a safetensors file")
    code = train_main([str(small_text), "--out", str(copy), "--resume", "--max-steps", "80",
                       *TINY_MODEL])
    assert code == 2
    assert "model.safetensors" in capsys.readouterr().err
    assert (copy / "model.safetensors").read_bytes() == b"not a safetensors file"


def test_ctrl_c_saves_checkpoint(small_text: Path, tmp_path: Path):
    out = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "elr_export.train_cli", str(small_text), "--out", str(out),
         "--max-steps", "100000", "--eval-interval", "100000", *TINY_MODEL],
        stderr=subprocess.PIPE, text=True)
    # wait for the first progress-bar update, then interrupt
    deadline = time.monotonic() + 120
    seen = ""
    while time.monotonic() < deadline and "step/s" not in seen and "s/step" not in seen:
        seen += proc.stderr.read(64)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert load_checkpoint(out).training_state["run"]["step"] >= 1


def test_torchrun_ranks_stay_identical(small_text: Path, tmp_path: Path):
    worker = Path(__file__).with_name("ddp_worker.py")
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", "29517",
                    str(worker), str(small_text), str(tmp_path)], check=True, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["param_sha256"] == ranks[1]["param_sha256"]
    losses = ranks[0]["losses"]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5


def test_compact_checkpoint_halves_weights(trained: Path, tmp_path: Path):
    import torch

    from elr_export.checkpoint import compact_checkpoint
    from elr_export.reference import sequence_tensors

    out = compact_checkpoint(trained, tmp_path / "compact", torch.float16)
    full_size = (trained / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.55 * full_size
    assert not (out / "optimizer.safetensors").exists()

    original, compact = load_checkpoint(trained), load_checkpoint(out)
    byte_ids, patch_ids = sequence_tensors(b"ROMEO: What light", original.patch_rule())
    with torch.no_grad():
        difference = (original.model(byte_ids, patch_ids)
                      - compact.model(byte_ids, patch_ids)).abs().max().item()
    # float16 keeps 11 significant bits: logits move by well under 0.05
    assert difference < 0.05
