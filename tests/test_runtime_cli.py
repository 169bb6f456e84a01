"""elr-run end to end in a subprocess on a real bundle, and its handling of bad input."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_bundles import TinyRun, read_manifest, shared_bundle, write_manifest

from elr_runtime import cli
from elr_runtime.generate import Generator
from elr_runtime.graph_io import DECODER_GRAPH, GRAPH_NAMES, graph_filename

# NOTE: an editable install made with `-Ceditable.rebuild=true` prints a "Running cmake"
# line on stdout when it checks the compiled patcher; this variable silences it.
ENV = {**os.environ, "SKBUILD_EDITABLE_VERBOSE": "0", "PYTHONUNBUFFERED": "1"}
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def run(tmp_path_factory, text_dir: Path) -> TinyRun:
    return shared_bundle(tmp_path_factory, text_dir)


@pytest.fixture(scope="module")
def fp32(run: TinyRun) -> Generator:
    return Generator(run.bundle, precision="fp32")


def elr_run(*args: str | bytes, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "elr_runtime.cli", *args]
    return subprocess.run(command, input=stdin if stdin is not None else b"",
                          capture_output=True, env=ENV, timeout=TIMEOUT_S)


def start_elr_run(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "elr_runtime.cli", *args]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)


# -- end to end -----------------------------------------------------------------------------


def test_prompt_streams_greedy_text(run, fp32):
    result = elr_run(str(run.bundle), "--prompt", "ROMEO:\n", "--max-bytes", "48",
                     "--precision", "fp32")
    expected = fp32.generate(b"ROMEO:\n", max_bytes=48).decode("utf-8", "replace")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("utf-8") == expected
    assert result.stderr == b""


def test_prompt_from_stdin(run, fp32):
    result = elr_run(str(run.bundle), "--max-bytes", "32", "--precision", "fp32",
                     stdin="日本語の文\n".encode())
    assert result.returncode == 0, result.stderr
    assert result.stdout == fp32.generate("日本語の文\n", max_bytes=32).decode(
        "utf-8", "replace").encode("utf-8")


def test_raw_output_is_unchanged_bytes(run, fp32):
    prompt = b"\xf0\x9f\x98"  # an unfinished emoji invites bytes that are not valid UTF-8
    result = elr_run(str(run.bundle), "--prompt", prompt, "--max-bytes", "40", "--raw",
                     "--precision", "fp32", "--temperature", "2", "--seed", "7")
    from elr_runtime.sampling import SamplingSettings
    expected = fp32.generate(prompt, SamplingSettings(temperature=2.0, seed=7), max_bytes=40)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


def test_invalid_utf8_prompt_is_allowed(run, fp32):
    prompt = b"ab\xff\xfecd"
    result = elr_run(str(run.bundle), b"--prompt", prompt, "--max-bytes", "24",
                     "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("utf-8") == fp32.generate(prompt, max_bytes=24).decode(
        "utf-8", "replace")


def test_empty_prompt_generates_from_document_start(run, fp32):
    result = elr_run(str(run.bundle), "--prompt", "", "--max-bytes", "16", "--precision",
                     "fp32")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("utf-8") == fp32.generate(b"", max_bytes=16).decode(
        "utf-8", "replace")


def test_stats_go_to_stderr(run):
    result = elr_run(str(run.bundle), "--prompt", "KING:", "--max-bytes", "20", "--stats",
                     "--reason")
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "time to first byte" in stderr
    assert "bytes/s" in stderr
    assert "global steps per byte" in stderr
    assert "2 latent steps" in stderr
    assert "time to first byte" not in result.stdout.decode("utf-8", "replace")


def test_stop_sequence_and_sampling_flags(run, fp32):
    full = fp32.generate(b"ROMEO:\n", max_bytes=60)
    stop = full[20:23]
    escaped = "".join(f"\\x{b:02x}" for b in stop)
    result = elr_run(str(run.bundle), "--prompt", "ROMEO:\n", "--max-bytes", "60",
                     "--precision", "fp32", "--stop", escaped, "--threads", "2", "--spin")
    assert result.returncode == 0, result.stderr
    assert result.stdout == full[:full.find(stop)].decode("utf-8", "replace").encode()


def test_interactive_answers_each_line(run, fp32):
    result = elr_run(str(run.bundle), "--interactive", "--max-bytes", "12", "--precision",
                     "fp32", stdin=b"ROMEO:\n\nKING:\n")
    answers = [fp32.generate(p, max_bytes=12).decode("utf-8", "replace")
               for p in (b"ROMEO:", b"KING:")]
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("utf-8") == "".join(a + "\n" for a in answers)
    # one input prompt per line read, the empty line included, and one before end of input
    assert result.stderr.decode().count("> ") == 4


def test_long_prompt_is_accepted(run):
    prompt = run.text[:30_000]
    result = elr_run(str(run.bundle), "--max-bytes", "8", "--stats", stdin=prompt)
    assert result.returncode == 0, result.stderr
    assert "prompt: 30000 bytes" in result.stderr.decode()


def test_closed_pipe_exits_quietly(run):
    process = start_elr_run(str(run.bundle), "--prompt", "ROMEO:", "--max-bytes", "1000000")
    assert process.stdout is not None and process.stderr is not None
    head = process.stdout.read(20)
    process.stdout.close()
    returncode = process.wait(timeout=TIMEOUT_S)
    stderr = process.stderr.read()
    process.stderr.close()
    assert len(head) == 20
    assert returncode == 0
    assert stderr == b""


def test_interactive_closed_pipe_exits(run):
    command = [sys.executable, "-m", "elr_runtime.cli", str(run.bundle), "--interactive",
               "--max-bytes", "1000000"]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=ENV)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"ROMEO:\nKING:\n")
    process.stdin.close()
    head = process.stdout.read(20)
    process.stdout.close()
    # the second prompt must not be answered into the closed pipe until --max-bytes
    returncode = process.wait(timeout=TIMEOUT_S)
    process.stderr.close()
    assert len(head) == 20
    assert returncode == 0


def test_stats_start_on_their_own_line(run):
    result = elr_run(str(run.bundle), "--prompt", "ROMEO:", "--max-bytes", "30", "--stats")
    assert result.returncode == 0, result.stderr
    if not result.stdout.endswith(b"\n"):
        assert result.stderr.startswith(b"\n")


def test_ctrl_c_stops_with_newline_and_stats(run):
    process = start_elr_run(str(run.bundle), "--prompt", "ROMEO:", "--max-bytes", "1000000")
    assert process.stdout is not None
    process.stdout.read(50)  # generation is under way
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=TIMEOUT_S)
    text = stderr.decode()
    assert process.returncode == cli.EXIT_INTERRUPTED
    assert "Traceback" not in text
    assert text.startswith("\n")
    assert "stop: interrupted" in text


# -- bad input ------------------------------------------------------------------------------


def test_missing_bundle_in_subprocess(tmp_path):
    result = elr_run(str(tmp_path / "missing"), "--prompt", "x")
    stderr = result.stderr.decode()
    assert result.returncode == cli.EXIT_BUNDLE_ERROR
    assert stderr.count("\n") == 1
    assert stderr.startswith("elr-run: error: bundle not found")


def test_tampered_bundle_in_subprocess(run, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(run.bundle, bundle)
    path = bundle / graph_filename(DECODER_GRAPH, "int8")
    path.write_bytes(path.read_bytes()[:-1])
    result = elr_run(str(bundle), "--prompt", "x")
    stderr = result.stderr.decode()
    assert result.returncode == cli.EXIT_BUNDLE_ERROR
    assert stderr.count("\n") == 1
    assert "sha256" in stderr
    assert "re-run elr-export" in stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--threads", "0"], "--threads 0 must be an integer >= 1"),
    (["--threads", "two"], "invalid int value"),
    (["--threads", "100000"], "--threads 100000 is far more than the"),
    (["--temperature", "-1"], "--temperature -1.0 must be a finite number >= 0"),
    (["--temperature", "nan"], "--temperature nan must be a finite number"),
    (["--top-k", "-3"], "--top-k -3 must be an integer >= 0"),
    (["--top-p", "0"], "--top-p 0.0 must be in (0, 1]"),
    (["--top-p", "7"], "--top-p 7.0 must be in (0, 1]"),
    (["--seed", "-5"], "--seed -5 must be an integer >= 0"),
    (["--max-bytes", "-1"], "--max-bytes must be an integer >= 0"),
    (["--stop", ""], "--stop must not be empty"),
    (["--stop", r"\xZZ"], r'invalid escape "\x"'),
    (["--stop", "end\\"], r'invalid escape "\"'),
    (["--stop", r"\q"], r'invalid escape "\q"'),
    (["--precision", "fp16"], "invalid choice"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--interactive"], "--prompt and --interactive exclude each other"),
])
def test_invalid_arguments(run, capsys, args, message):
    status = cli.main([str(run.bundle), "--prompt", "x", *args])
    err = capsys.readouterr().err
    assert status == cli.EXIT_USAGE
    assert err.startswith("elr-run: error: ")
    assert message in err
    assert err.count("\n") == 1


def test_newer_format_bundle(run, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(run.bundle, bundle)
    manifest = read_manifest(bundle)
    manifest["format_version"] += 1
    write_manifest(bundle, manifest)
    status = cli.main([str(bundle), "--prompt", "x"])
    err = capsys.readouterr().err
    assert status == cli.EXIT_BUNDLE_ERROR
    assert "newer than this runtime reads" in err
    assert err.count("\n") == 1


def test_missing_precision(run, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(run.bundle, bundle)
    manifest = read_manifest(bundle)
    for graph in GRAPH_NAMES:
        del manifest["graphs"][graph]["int8"]
    write_manifest(bundle, manifest)
    status = cli.main([str(bundle), "--prompt", "x", "--precision", "int8"])
    err = capsys.readouterr().err
    assert status == cli.EXIT_BUNDLE_ERROR
    assert "no int8 graphs" in err
    assert "--precision fp32" in err


def test_stop_escapes():
    assert cli.parse_stop(r"\n\nEND") == b"\n\nEND"
    assert cli.parse_stop(r"\x00\t\\") == b"\x00\t\\"
    assert cli.parse_stop("日本") == "日本".encode()


def test_32_bit_userland_is_rejected(monkeypatch, capsys):
    assert cli.platform_problem(pointer_bytes=8, machine="aarch64") is None
    assert "64-bit" in cli.platform_problem(pointer_bytes=4, machine="armv7l")
    real_calcsize = struct.calcsize
    monkeypatch.setattr(struct, "calcsize", lambda fmt: 4 if fmt == "P" else real_calcsize(fmt))
    status = cli.main(["anything", "--prompt", "x"])
    err = capsys.readouterr().err
    assert status == cli.EXIT_BUNDLE_ERROR
    assert err.startswith("elr-run: error: elr-run needs a 64-bit userland")
    assert err.count("\n") == 1
