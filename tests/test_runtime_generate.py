"""The generation loop on a real exported bundle, checked against the PyTorch reference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_bundles import (
    N_LATENT_STEPS,
    TinyRun,
    load_reference,
    read_manifest,
    shared_bundle,
    torch_threads,
    write_manifest,
)

from elr_export.model import ELRModel
from elr_export.reference import generate as reference_generate
from elr_runtime.bundle import BundleError
from elr_runtime.generate import Generator
from elr_runtime.graph_io import BOS_ID, BOT_ID, EOS_ID, EOT_ID, PAD_ID
from elr_runtime.patching import PatchRule
from elr_runtime.sampling import SamplingSettings

GREEDY_BYTES = 40


@pytest.fixture(scope="module")
def run(tmp_path_factory, text_dir: Path) -> TinyRun:
    return shared_bundle(tmp_path_factory, text_dir)


@pytest.fixture(scope="module")
def reference(run: TinyRun) -> tuple[ELRModel, PatchRule]:
    return load_reference(run)


@pytest.fixture(scope="module")
def fp32(run: TinyRun) -> Generator:
    # small prefill chunks, so that a long prompt takes several encoder and decoder calls
    return Generator(run.bundle, precision="fp32", prefill_chunk=64)


def prompts(run: TinyRun) -> dict[str, bytes]:
    return {
        "empty": b"",
        "ascii": b"ROMEO:\n",
        "multibyte": "Ça va? 日本語 😀 — fin\n".encode(),
        "invalid_utf8": b"ab\xff\xfe\xc3cd",
        "long": run.text[1000:1400],  # many patches, far beyond both attention windows
    }


@pytest.mark.parametrize("name", ["empty", "ascii", "multibyte", "invalid_utf8", "long"])
def test_fp32_greedy_equals_reference(run, reference, fp32, name):
    model, rule = reference
    prompt = prompts(run)[name]
    with torch_threads(1):
        expected = reference_generate(model, rule, prompt, GREEDY_BYTES)
    assert fp32.generate(prompt, max_bytes=GREEDY_BYTES) == expected


def test_long_prompt_spans_many_patches_and_chunks(run, fp32):
    fp32.generate(prompts(run)["long"], max_bytes=1)
    assert fp32.stats.prompt_global_steps > 50
    # the rings filled up: the prompt is longer than the local window and has more patches
    # than the global window reaches
    assert fp32.runner.encoder_cache.size == fp32.runner.encoder_cache.max_capacity
    assert fp32.runner.global_cache.size == fp32.runner.global_cache.max_capacity


def test_byte_by_byte_prefill_equals_chunked(run):
    prompt = prompts(run)["multibyte"] + run.text[:100]
    chunked = Generator(run.bundle, precision="fp32", prefill_chunk=256)
    bytewise = Generator(run.bundle, precision="fp32", prefill_chunk=1)
    assert bytewise.generate(prompt, max_bytes=24) == chunked.generate(prompt, max_bytes=24)


def test_runtime_imports_no_torch(run):
    script = (
        "import json, sys\n"
        "from elr_runtime import Generator\n"
        f"generator = Generator({str(run.bundle)!r})\n"
        "text = ''.join(generator.stream_text('ROMEO:', max_bytes=16))\n"
        "print(json.dumps({'text': text, 'modules': sorted(sys.modules)}))\n"
    )
    env = {**os.environ, "SKBUILD_EDITABLE_VERBOSE": "0"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=120, check=True)
    report = json.loads(result.stdout.splitlines()[-1])
    top_level = {name.split(".")[0] for name in report["modules"]}
    assert report["text"]
    assert "torch" not in top_level
    assert "onnx" not in top_level
    assert "elr_export" not in top_level


def test_stream_text_equals_decoded_bytes(fp32):
    sampling = SamplingSettings(temperature=1.5, seed=5)
    data = fp32.generate(b"KING:", sampling, max_bytes=200)
    chunks = list(fp32.stream_text(b"KING:", sampling, max_bytes=200))
    assert all(chunks)
    assert "".join(chunks) == data.decode("utf-8", "replace")


def test_same_seed_same_output(fp32):
    sampling = SamplingSettings(temperature=1.0, top_k=40, top_p=0.95, seed=11)
    assert fp32.generate(b"A", sampling, max_bytes=64) == fp32.generate(b"A", sampling,
                                                                        max_bytes=64)


def test_different_seeds_differ(fp32):
    first = fp32.generate(b"A", SamplingSettings(temperature=1.0, seed=1), max_bytes=64)
    second = fp32.generate(b"A", SamplingSettings(temperature=1.0, seed=2), max_bytes=64)
    assert first != second


def test_stop_sequence_cuts_output(fp32):
    full = fp32.generate(b"ROMEO:\n", max_bytes=60)
    stop = full[20:23]
    cut = fp32.generate(b"ROMEO:\n", max_bytes=60, stop=[stop])
    assert cut == full[:full.find(stop)]
    assert fp32.stats.stop_reason == "stop_sequence"


def test_max_bytes_zero_generates_nothing(fp32):
    assert fp32.generate(b"ROMEO:", max_bytes=0) == b""
    assert fp32.stats.stop_reason == "max_bytes"


def test_second_stream_takes_over_the_generator(fp32):
    first = fp32.stream_bytes(b"ROMEO:", max_bytes=20)
    next(first)
    assert fp32.generate(b"KING:", max_bytes=5)
    with pytest.raises(RuntimeError, match="another stream"):
        next(first)


def test_stats_after_generation(fp32):
    out = fp32.generate(b"ROMEO:", max_bytes=50)
    stats = fp32.stats
    assert stats.generated_bytes == len(out) == 50
    assert stats.time_to_first_byte_s is not None and stats.time_to_first_byte_s > 0
    assert stats.bytes_per_s is not None and stats.bytes_per_s > 0
    assert 0 < stats.global_steps_per_byte <= 1
    assert stats.byte_ms_percentile(50) <= stats.byte_ms_percentile(95)
    assert "bytes/s" in stats.summary()


def test_int8_is_the_default_and_generates(run):
    generator = Generator(run.bundle)
    assert generator.precision == "int8"
    out = generator.generate(b"ROMEO:\n", max_bytes=32)
    assert 0 < len(out) <= 32


def test_long_stream_keeps_caches_bounded(run):
    generator = Generator(run.bundle, precision="fp32")
    long_prompt = run.text[:20_000]  # far over both attention windows and the prefill chunk
    chunks = generator.stream_bytes(long_prompt, SamplingSettings(temperature=1.0, seed=0),
                                    max_bytes=3000)
    runner = generator.runner
    caches = {"encoder": runner.encoder_cache, "global": runner.global_cache,
              "decoder": runner.decoder_cache}
    arrays: dict[str, np.ndarray] = {}
    for _ in chunks:
        if not arrays:  # after the prompt, which fills every ring
            arrays = {name: cache.keys[0] for name, cache in caches.items()}
        for name, cache in caches.items():
            assert cache.capacity <= cache.spec.window - 1, name
    for name, cache in caches.items():
        # a full ring is written in place: the same arrays from the first byte to the last
        assert cache.capacity == cache.max_capacity, name
        assert cache.keys[0] is arrays[name], name
    assert generator.stats.generated_bytes > 1000
    assert runner.position == 1 + len(long_prompt) + generator.stats.generated_bytes - 1


# -- latent reasoning -----------------------------------------------------------------------


@torch.no_grad()
def reasoning_reference(model: ELRModel, rule: PatchRule, prompt: bytes, n_latent_steps: int,
                        max_bytes: int) -> bytes:
    """Greedy generation after BOT, the latent loop and EOT, one id at a time in PyTorch.

    Boundaries as the runtime documents them: BOS, BOT and EOT are patches of their own, a
    patch ends before BOT, and the patch rule starts afresh after EOT.
    """
    c = model.config
    enc, glob, dec = (model.encoder.empty_cache(1), model.global_model.empty_cache(1),
                      model.decoder.empty_cache(1))
    incremental = rule.incremental()
    history = [PAD_ID] * c.ngram_history
    state = {"position": 0, "global_position": 0, "pending": [], "context": None}

    def feed(token: int, following: int | None) -> torch.Tensor:
        nonlocal enc, glob, dec
        position = torch.tensor([[state["position"]]])
        hidden, *new = model.encoder_step(torch.tensor([[token]]),
                                          torch.tensor([history[-c.ngram_history:]]),
                                          position, enc)
        enc = enc.append(position, *new)
        history.append(token)
        state["pending"].append(hidden)
        if token < 256:
            incremental.push(token)
            starts = incremental.next_starts_patch()
        else:
            starts = True
            if token == EOT_ID:
                incremental.reset()
        if starts or following == BOT_ID:
            global_position = torch.tensor([[state["global_position"]]])
            state["context"], *new = model.global_step(
                torch.cat(state["pending"], dim=1), global_position, glob)
            glob = glob.append(global_position, *new)
            state["global_position"] += 1
            state["pending"] = []
            if token == BOT_ID:
                first = state["global_position"]
                state["context"], *new = model.latent_loop(
                    state["context"], torch.tensor([[first]]), glob, n_latent_steps)
                glob = glob.append(torch.arange(first, first + n_latent_steps)[None], *new)
                state["global_position"] += n_latent_steps
        logits, *new = model.decoder_step(hidden, state["context"], position, dec)
        dec = dec.append(position, *new)
        state["position"] += 1
        return logits[0, -1]

    ids = [BOS_ID, *prompt, BOT_ID, EOT_ID]
    for i, token in enumerate(ids):
        logits = feed(token, ids[i + 1] if i + 1 < len(ids) else None)
    out = bytearray()
    for _ in range(max_bytes):
        scores = logits.double().numpy()
        scores[256:] = np.where(np.arange(256, len(scores)) == EOS_ID, scores[256:], -np.inf)
        next_id = int(np.argmax(scores))
        if next_id == EOS_ID:
            break
        out.append(next_id)
        logits = feed(next_id, None)
    return bytes(out)


@pytest.mark.parametrize("prompt", [b"", b"ROMEO:\nWhat say", "日本語😀".encode()])
def test_reasoning_greedy_equals_torch_steps(run, reference, fp32, prompt):
    model, rule = reference
    with torch_threads(1):
        expected = reasoning_reference(model, rule, prompt, N_LATENT_STEPS, 24)
    assert fp32.generate(prompt, max_bytes=24, reason=True) == expected
    assert fp32.stats.latent_steps == N_LATENT_STEPS


def test_reasoning_changes_the_answer(fp32):
    plain = fp32.generate(b"ROMEO:\n", max_bytes=24)
    thought = fp32.generate(b"ROMEO:\n", max_bytes=24, reason=True)
    assert plain != thought


def test_latent_count_mismatch_is_reported(run, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(run.bundle, bundle)
    manifest = read_manifest(bundle)
    manifest["n_latent_steps"] = N_LATENT_STEPS + 1
    write_manifest(bundle, manifest)
    generator = Generator(bundle, precision="fp32")
    with pytest.raises(BundleError, match="latent_loop graph ran 2 steps"):
        generator.generate(b"Q", max_bytes=4, reason=True)
