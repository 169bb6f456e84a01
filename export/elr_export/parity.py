"""Parity of exported graphs with PyTorch, and the int8 accuracy gate.

Three levels of checks, all run by elr-export before a bundle is written:

1. Each graph against the PyTorch function it came from, on random inputs at cache lengths
   0, 1 and beyond the attention window, batch 1 and 2: every output within FP32_TOLERANCE.
2. The whole loop: `OnnxStepper` drives the four graphs the way the runtime does (chunks,
   global steps at patch ends, caches trimmed to the window) and its logits and greedy bytes
   are compared with `reference.step_logits` and `reference.generate`.
3. int8 against fp32 on held-out text: bits per byte and next-byte top-1 agreement.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from elr_export.config import ModelConfig
from elr_export.model import ELRModel
from elr_export.onnx_export import cache_stack, example_inputs, graph_module, input_names
from elr_export.reference import generate, step_logits
from elr_runtime.graph_io import (
    BOS_ID,
    EOS_ID,
    GRAPH_NAMES,
    LATENT_GRAPH,
    NEW_KEYS,
    PAD_ID,
    POSITIONS_INPUT,
    graph_outputs,
    past_key_name,
    past_value_name,
)
from elr_runtime.patching import PatchRule

logger = logging.getLogger(__name__)

# Maximum absolute difference allowed between any fp32 graph output and PyTorch. Observed
# differences are around 1e-6 for hidden states and 2e-5 for logits of small models.
FP32_TOLERANCE = 1e-4
# int8 gate: bits per byte may rise by at most 2 % over fp32, and the int8 graphs' most
# likely next byte must equal fp32's at 97 % of positions or more.
INT8_MAX_BPB_INCREASE = 0.02
INT8_MIN_TOP1_AGREEMENT = 0.97

# Bytes per encoder/decoder call when a whole text is fed to the graphs.
EVAL_CHUNK_LENGTH = 64


def open_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """Open an onnxruntime CPU session on `path` with `threads` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def open_sessions(paths: Mapping[str, str | Path], threads: int = 1
                  ) -> dict[str, ort.InferenceSession]:
    return {graph: open_session(path, threads) for graph, path in paths.items()}


# -- 1. each graph against PyTorch ----------------------------------------------------------


@dataclass(frozen=True)
class GraphParity:
    """Largest difference between one graph and PyTorch over all cases and outputs."""

    graph: str
    max_abs_diff: float
    cases: int
    worst_case: str

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= FP32_TOLERANCE


def parity_cache_lengths(model: ELRModel, graph: str) -> tuple[int, int, int]:
    """Return the cache lengths to test: 0, 1 and 3 positions beyond the attention window."""
    return 0, 1, cache_stack(model, graph).window + 3


@torch.no_grad()
def check_graph(model: ELRModel, graph: str, session: ort.InferenceSession,
                n_latent_steps: int, batches: Sequence[int] = (1, 2),
                new_lengths: Sequence[int] = (1, 3), seed: int = 0) -> GraphParity:
    """Compare `session` with the PyTorch function of `graph` on random inputs.

    Covers every combination of batch, new length (patch length for the global step) and
    cache length from `parity_cache_lengths`.
    """
    module = graph_module(model, graph, n_latent_steps)
    generator = torch.Generator().manual_seed(seed)
    worst, worst_case, cases = 0.0, "", 0
    for batch in batches:
        for new_length in new_lengths:
            for past_length in parity_cache_lengths(model, graph):
                inputs = example_inputs(model, graph, batch, new_length, past_length, generator)
                expected = module(*inputs.values())
                outputs = list(graph_outputs(graph))
                actual = session.run(outputs, {name: t.numpy() for name, t in inputs.items()})
                for name, want, got in zip(outputs, expected, actual, strict=True):
                    case = (f"{name} at batch {batch}, new length {new_length}, cache length "
                            f"{past_length}")
                    if tuple(want.shape) != got.shape:
                        # a wrong shape counts as an infinite difference
                        diff = math.inf
                        case += f" (shape {got.shape}, PyTorch {tuple(want.shape)})"
                    else:
                        diff = float(np.abs(want.numpy() - got).max()) if got.size else 0.0
                    if math.isnan(diff):
                        diff = math.inf
                    if diff > worst or not worst_case:
                        worst, worst_case = diff, case
                cases += 1
    logger.info("%s: max abs diff %.2e over %d cases (%s)", graph, worst, cases, worst_case)
    return GraphParity(graph, worst, cases, worst_case)


def latent_steps_in_graph(session: ort.InferenceSession, config: ModelConfig) -> int:
    """Run the latent loop graph on an empty cache and return how many positions it adds."""
    cache = _LinearCache(config.n_global_layers, config.n_global_heads, config.d_global,
                         config.global_window)
    feeds = {
        "latent_input": np.zeros((1, 1, config.d_global), dtype=np.float32),
        "position_ids": np.zeros((1, 1), dtype=np.int64),
        **cache.feeds(),
    }
    new_keys = session.run([NEW_KEYS], feeds)[0]
    return int(new_keys.shape[3])


# -- 2. the whole loop through onnxruntime --------------------------------------------------


class _LinearCache:
    """A stack's cache slots in position order, cut to the last window - 1 after each call.

    Deliberately not the runtime's ring buffer (`elr_runtime.cache`): the two must give the
    same outputs, and this one is simple enough to check by eye.
    """

    def __init__(self, n_layers: int, n_heads: int, width: int, window: int) -> None:
        self.n_layers = n_layers
        self.keep = window - 1
        self.positions = np.zeros((1, 0), dtype=np.int64)
        empty = np.zeros((1, n_heads, 0, width // n_heads), dtype=np.float32)
        self.keys = [empty] * n_layers
        self.values = [empty] * n_layers

    def feeds(self) -> dict[str, np.ndarray]:
        feeds = {POSITIONS_INPUT: self.positions}
        for layer in range(self.n_layers):
            feeds[past_key_name(layer)] = self.keys[layer]
            feeds[past_value_name(layer)] = self.values[layer]
        return feeds

    def append(self, first_position: int, new_keys: np.ndarray, new_values: np.ndarray) -> None:
        count = new_keys.shape[3]
        new_positions = np.arange(first_position, first_position + count, dtype=np.int64)[None]
        start = max(0, self.positions.shape[1] + count - self.keep)
        self.positions = np.concatenate((self.positions, new_positions), axis=1)[:, start:]
        self.keys = [np.ascontiguousarray(np.concatenate((k, new), axis=2)[:, :, start:])
                     for k, new in zip(self.keys, new_keys, strict=True)]
        self.values = [np.ascontiguousarray(np.concatenate((v, new), axis=2)[:, :, start:])
                       for v, new in zip(self.values, new_values, strict=True)]


class OnnxStepper:
    """Batch-1 decoding through the encoder, global and decoder graphs with KV caches.

    `feed` takes a chunk of byte ids and, for each of them, whether the next position starts
    a patch (always True after BOS). It returns the next-byte logits of every position in
    the chunk. Caches keep only the positions that the attention windows can still reach.
    """

    def __init__(self, sessions: Mapping[str, ort.InferenceSession], config: ModelConfig) -> None:
        self.sessions = sessions
        self.config = config
        self.reset()

    def reset(self) -> None:
        c = self.config
        self.position = 0
        self.history = np.full((1, c.ngram_history), PAD_ID, dtype=np.int64)
        self.encoder_cache = _LinearCache(c.n_encoder_layers, c.n_local_heads, c.d_local,
                                          c.local_window)
        self.global_cache = _LinearCache(c.n_global_layers, c.n_global_heads, c.d_global,
                                         c.global_window)
        self.decoder_cache = _LinearCache(c.n_decoder_layers, c.n_local_heads, c.d_local,
                                          c.local_window)
        self.pending: list[np.ndarray] = []  # encoder states of the unfinished patch
        self.context: np.ndarray | None = None  # global output of the last finished patch
        self.n_patches = 0

    def feed(self, byte_ids: Sequence[int], next_starts_patch: Sequence[bool]) -> np.ndarray:
        ids = np.asarray(byte_ids, dtype=np.int64)[None]  # (1, T)
        length = ids.shape[1]
        positions = np.arange(self.position, self.position + length, dtype=np.int64)[None]

        # encoder over the chunk
        hidden, keys, values = self.sessions["encoder_step"].run(None, {
            "byte_ids": ids, "prev_byte_ids": self.history, "position_ids": positions,
            **self.encoder_cache.feeds()})
        self.encoder_cache.append(self.position, keys, values)

        # a global step for every patch that finishes inside the chunk
        contexts = []
        for offset in range(length):
            self.pending.append(hidden[:, offset:offset + 1])
            if next_starts_patch[offset]:
                self.context, keys, values = self.sessions["global_step"].run(None, {
                    "patch_hidden": np.concatenate(self.pending, axis=1),
                    "position_ids": np.array([[self.n_patches]], dtype=np.int64),
                    **self.global_cache.feeds()})
                self.global_cache.append(self.n_patches, keys, values)
                self.n_patches += 1
                self.pending = []
            if self.context is None:
                raise ValueError("the first position (BOS) must end a patch")
            contexts.append(self.context)

        # decoder over the chunk
        logits, keys, values = self.sessions["decoder_step"].run(None, {
            "encoder_hidden": hidden, "global_context": np.concatenate(contexts, axis=1),
            "position_ids": positions, **self.decoder_cache.feeds()})
        self.decoder_cache.append(self.position, keys, values)

        # advance: n-gram history and position
        self.history = np.concatenate((self.history, ids), axis=1)[:, ids.shape[1]:]
        self.position += length
        return logits[0]


def sequence_flags(data: bytes, rule: PatchRule) -> list[bool]:
    """Return next_starts_patch for BOS followed by `data`: len(data) + 1 flags.

    The flag of the last position is computed with a zero byte in place of the byte after
    `data`. The patch rule is causal, so that byte does not change the flag.
    """
    return [bool(flag) for flag in rule.patch_start_mask(bytes(data) + b"\x00")]


def text_logits(stepper: OnnxStepper, data: bytes, rule: PatchRule,
                chunk_length: int = EVAL_CHUNK_LENGTH) -> np.ndarray:
    """Feed BOS + `data` in chunks and return logits (len(data) + 1, vocab_size)."""
    ids = [BOS_ID, *data]
    flags = sequence_flags(data, rule)
    stepper.reset()
    chunks = [stepper.feed(ids[i:i + chunk_length], flags[i:i + chunk_length])
              for i in range(0, len(ids), chunk_length)]
    return np.concatenate(chunks)


def greedy_generate(stepper: OnnxStepper, rule: PatchRule, prompt: bytes,
                    max_new_bytes: int) -> bytes:
    """Greedy decoding through the graphs, with the same masking as `reference.generate`."""
    incremental = rule.incremental()
    ids, flags = [BOS_ID], [incremental.next_starts_patch()]
    for byte in prompt:
        incremental.push(byte)
        ids.append(byte)
        flags.append(incremental.next_starts_patch())
    stepper.reset()
    for start in range(0, len(ids), EVAL_CHUNK_LENGTH):
        logits = stepper.feed(ids[start:start + EVAL_CHUNK_LENGTH],
                              flags[start:start + EVAL_CHUNK_LENGTH])

    out = bytearray()
    for _ in range(max_new_bytes):
        scores = logits[-1].astype(np.float64)
        scores[256:EOS_ID] = -np.inf
        scores[EOS_ID + 1:] = -np.inf
        next_id = int(np.argmax(scores))
        if next_id == EOS_ID:
            break
        out.append(next_id)
        incremental.push(next_id)
        logits = stepper.feed([next_id], [incremental.next_starts_patch()])
    return bytes(out)


@torch.no_grad()
def check_sequence(model: ELRModel, sessions: Mapping[str, ort.InferenceSession],
                   rule: PatchRule, data: bytes) -> float:
    """Return the max abs logit difference between the graphs and PyTorch over BOS + `data`.

    The graphs run through `OnnxStepper` (chunks, trimmed caches), PyTorch through
    `reference.step_logits` with the same chunks and untrimmed caches.
    """
    ids = [BOS_ID, *data]
    chunks = [min(EVAL_CHUNK_LENGTH, len(ids) - i) for i in range(0, len(ids), EVAL_CHUNK_LENGTH)]
    expected = step_logits(model, ids, sequence_flags(data, rule), chunks).numpy()
    actual = text_logits(OnnxStepper(sessions, model.config), data, rule)
    return float(np.abs(expected - actual).max())


def check_greedy(model: ELRModel, sessions: Mapping[str, ort.InferenceSession],
                 rule: PatchRule, prompt: bytes, max_new_bytes: int) -> tuple[bytes, bytes]:
    """Return (graph bytes, PyTorch bytes) of greedy generation after `prompt`."""
    from_graphs = greedy_generate(OnnxStepper(sessions, model.config), rule, prompt,
                                  max_new_bytes)
    from_torch = generate(model, rule, prompt, max_new_bytes)
    return from_graphs, from_torch


# -- 3. int8 against fp32 on held-out text --------------------------------------------------


def bits_per_byte(logits: np.ndarray, data: bytes) -> float:
    """Return the mean negative log2 probability of each byte of `data`.

    logits: (len(data) + 1, vocab_size) from `text_logits`; row t predicts data[t].
    """
    scores = logits[:len(data)].astype(np.float64)
    scores -= scores.max(axis=1, keepdims=True)
    log_probs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    targets = np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64)
    nats = -log_probs[np.arange(len(data)), targets]
    return float(nats.mean() / math.log(2))


def top1_agreement(logits_a: np.ndarray, logits_b: np.ndarray, n_rows: int) -> float:
    """Return the fraction of the first n_rows positions where both argmaxes are equal."""
    return float(np.mean(logits_a[:n_rows].argmax(axis=1) == logits_b[:n_rows].argmax(axis=1)))


def decode_ms_per_byte(stepper: OnnxStepper, data: bytes, rule: PatchRule,
                       n_bytes: int = 128) -> float:
    """Time feeding `data` one byte per call (as in generation); return milliseconds per byte.

    The first 8 bytes are a warm-up and are not timed, because the first calls of a session
    allocate buffers.
    """
    warmup = 8
    ids = [BOS_ID, *data[:n_bytes + warmup]]
    flags = sequence_flags(bytes(data[:n_bytes + warmup]), rule)
    stepper.reset()
    for i in range(warmup):
        stepper.feed(ids[i:i + 1], flags[i:i + 1])
    start = time.perf_counter()
    for i in range(warmup, len(ids)):
        stepper.feed(ids[i:i + 1], flags[i:i + 1])
    return (time.perf_counter() - start) * 1000.0 / max(1, len(ids) - warmup)


@dataclass
class TextParity:
    """Figures of one precision on the held-out text."""

    bpb: float
    logits: np.ndarray  # (len(text) + 1, vocab_size)
    decode_ms_per_byte: float = math.nan  # filled in by `compare_decode_times`

    def to_dict(self) -> dict[str, Any]:
        return {"bpb": round(self.bpb, 5), "decode_ms_per_byte": round(self.decode_ms_per_byte, 4)}


def measure_text(sessions: Mapping[str, ort.InferenceSession], config: ModelConfig,
                 data: bytes, rule: PatchRule) -> TextParity:
    """Run `data` through the graphs and return its bits per byte and logits."""
    logits = text_logits(OnnxStepper(sessions, config), data, rule)
    return TextParity(bits_per_byte(logits, data), logits)


def compare_decode_times(steppers: Mapping[str, OnnxStepper], data: bytes, rule: PatchRule,
                         n_bytes: int = 128, repeats: int = 3) -> dict[str, float]:
    """Time every stepper on the same bytes and return the best ms per byte of each.

    The runs alternate between steppers, so a change in load from other processes affects
    all of them alike, and the best of `repeats` runs discards most of that noise.
    """
    best = {name: math.inf for name in steppers}
    for _ in range(repeats):
        for name, stepper in steppers.items():
            best[name] = min(best[name], decode_ms_per_byte(stepper, data, rule, n_bytes))
    return best


def int8_gate(fp32: TextParity, int8: TextParity, n_bytes: int) -> dict[str, Any]:
    """Compare int8 with fp32 figures and return them with the accuracy gate's verdict."""
    increase = int8.bpb / fp32.bpb - 1.0
    agreement = top1_agreement(fp32.logits, int8.logits, n_bytes)
    passed = increase <= INT8_MAX_BPB_INCREASE and agreement >= INT8_MIN_TOP1_AGREEMENT
    return {
        "bpb_increase": round(increase, 5),
        "top1_agreement": round(agreement, 5),
        "max_bpb_increase": INT8_MAX_BPB_INCREASE,
        "min_top1_agreement": INT8_MIN_TOP1_AGREEMENT,
        "passed": passed,
        "faster_than_fp32": int8.decode_ms_per_byte < fp32.decode_ms_per_byte,
    }


def check_all_graphs(model: ELRModel, sessions: Mapping[str, ort.InferenceSession],
                     n_latent_steps: int) -> dict[str, GraphParity]:
    """Run `check_graph` on every graph of the bundle."""
    return {graph: check_graph(model, graph, sessions[graph], n_latent_steps)
            for graph in GRAPH_NAMES}


def graph_parity_dict(results: Mapping[str, GraphParity]) -> dict[str, Any]:
    return {graph: {"max_abs_diff": float(f"{r.max_abs_diff:.3g}"), "cases": r.cases,
                    "worst_case": r.worst_case, "passed": r.passed}
            for graph, r in results.items()}


def check_latent_count(sessions: Mapping[str, ort.InferenceSession], config: ModelConfig,
                       n_latent_steps: int) -> int:
    """Return the latent step count of the graph; raise ValueError if it differs."""
    found = latent_steps_in_graph(sessions[LATENT_GRAPH], config)
    if found != n_latent_steps:
        raise ValueError(f"the latent loop graph runs {found} steps, but {n_latent_steps} "
                         "were exported: the export is wrong, report it")
    return found


def graph_io_names(session: ort.InferenceSession) -> tuple[list[str], list[str]]:
    return ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])


def check_io_names(sessions: Mapping[str, ort.InferenceSession], model: ELRModel) -> None:
    """Raise ValueError if a graph's input or output names differ from graph_io."""
    for graph, session in sessions.items():
        inputs, outputs = graph_io_names(session)
        want_inputs, want_outputs = input_names(model, graph), graph_outputs(graph)
        if tuple(inputs) != want_inputs or tuple(outputs) != want_outputs:
            raise ValueError(f"exported {graph} has inputs {inputs} and outputs {outputs}, "
                             f"expected {list(want_inputs)} and {list(want_outputs)}: "
                             "the export is wrong, report it")
