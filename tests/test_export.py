"""ONNX graphs of a tiny trained model, run in onnxruntime, against PyTorch.

One model is trained for a few steps and exported once per module (fp32 and int8); every test
runs real onnxruntime sessions on those files.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from export_helpers import entropy_patching, tiny_model, torch_threads, train_briefly

from elr_export import parity
from elr_export.onnx_export import cache_stack, example_inputs, export_graphs, graph_module
from elr_export.quantize import (
    QuantizationSettings,
    embedding_nodes,
    quantize_graph,
    weight_matmul_nodes,
)
from elr_export.reference import generate, sequence_tensors
from elr_runtime.graph_io import (
    DECODER_GRAPH,
    ENCODER_GRAPH,
    GRAPH_NAMES,
    LATENT_GRAPH,
    graph_filename,
    graph_inputs,
    graph_outputs,
)
from elr_runtime.patching import PatchRule

N_LATENT_STEPS = 2
# A different count changes the latent output by far more than this; the same count leaves
# it within FP32_TOLERANCE.
LATENT_COUNT_MIN_DIFF = 1e-2


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def texts(text_dir: Path) -> SimpleNamespace:
    data = (text_dir / "tinyshakespeare.txt").read_bytes()
    # the conventional split: first 90 % train, last 10 % held out
    split = len(data) * 9 // 10
    return SimpleNamespace(train=data[:200_000], held_out=data[split:split + 4096])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, texts) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("graphs")
    fixed_rule = PatchRule("fixed", None, 3)
    model = train_briefly(tiny_model("fixed"), fixed_rule, texts.train, steps=150)
    fp32_paths = export_graphs(model, out, N_LATENT_STEPS)
    int8_paths = {g: out / graph_filename(g, "int8") for g in GRAPH_NAMES}
    reports = {g: quantize_graph(fp32_paths[g], int8_paths[g], QuantizationSettings())
               for g in GRAPH_NAMES}
    entropy_rule, _, _ = entropy_patching(texts.train)
    return SimpleNamespace(
        model=model, fp32_paths=fp32_paths, int8_paths=int8_paths, reports=reports,
        fp32=parity.open_sessions(fp32_paths), int8=parity.open_sessions(int8_paths),
        # the graphs do not depend on the patching scheme: it only decides when the
        # runtime calls the global step, so one export serves both rules
        rules={"fixed": fixed_rule, "entropy": entropy_rule})


# -- graph files ------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_graph_io_names_match_graph_io(exported, graph):
    session = exported.fp32[graph]
    n_layers = len(cache_stack(exported.model, graph).layers)
    assert [i.name for i in session.get_inputs()] == list(graph_inputs(graph, n_layers))
    assert [o.name for o in session.get_outputs()] == list(graph_outputs(graph))


@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_graph_file_has_no_external_data(exported, graph):
    proto = onnx.load(str(exported.fp32_paths[graph]), load_external_data=False)
    external = [t.name for t in proto.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external == []


def test_graph_dir_has_only_graph_files(exported):
    names = {p.name for p in Path(exported.fp32_paths[DECODER_GRAPH]).parent.iterdir()}
    expected = {graph_filename(g, p) for g in GRAPH_NAMES for p in ("fp32", "int8")}
    assert names == expected


@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_batch_and_cache_axes_are_dynamic(exported, graph):
    proto = onnx.load(str(exported.fp32_paths[graph]))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in proto.graph.input}
    assert dims["past_keys.0"][0] == "batch"
    assert dims["past_keys.0"][2] == "capacity"
    assert dims["past_positions"] == ["batch", "capacity"]
    assert dims["position_ids"][0] == "batch"


def test_torchscript_exporter_matches_torch(exported, tmp_path):
    paths = export_graphs(exported.model, tmp_path, N_LATENT_STEPS, exporter="torchscript")
    sessions = parity.open_sessions(paths)
    parity.check_io_names(sessions, exported.model)
    for graph in GRAPH_NAMES:
        result = parity.check_graph(exported.model, graph, sessions[graph], N_LATENT_STEPS)
        assert result.max_abs_diff <= parity.FP32_TOLERANCE, result.worst_case
    names = {node.name for node in onnx.load(str(paths[DECODER_GRAPH])).graph.node}
    assert "decoder.layers.0.attn.qkv/MatMul" in names


def test_node_names_follow_modules(exported):
    proto = onnx.load(str(exported.fp32_paths[DECODER_GRAPH]))
    names = {node.name for node in proto.graph.node}
    assert "decoder.layers.0.attn.qkv/MatMul" in names
    assert "decoder.layers.1.mlp.2/MatMul" in names
    assert "head/MatMul" in names


# -- each graph against PyTorch ---------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("cache", ["empty", "one", "beyond_window"])
@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_fp32_graph_matches_torch(exported, graph, cache, batch):
    model = exported.model
    past_length = dict(zip(("empty", "one", "beyond_window"),
                           parity.parity_cache_lengths(model, graph), strict=True))[cache]
    module = graph_module(model, graph, N_LATENT_STEPS)
    generator = torch.Generator().manual_seed(batch * 100 + past_length)
    for new_length in (1, 5):
        inputs = example_inputs(model, graph, batch, new_length, past_length, generator)
        with torch.no_grad():
            expected = [t.numpy() for t in module(*inputs.values())]
        actual = exported.fp32[graph].run(None, {k: v.numpy() for k, v in inputs.items()})
        for name, want, got in zip(graph_outputs(graph), expected, actual, strict=True):
            assert got.shape == want.shape, name
            assert np.abs(got - want).max() <= parity.FP32_TOLERANCE, name


def test_latent_loop_runs_manifest_count(exported):
    model = exported.model
    generator = torch.Generator().manual_seed(7)
    inputs = example_inputs(model, LATENT_GRAPH, 2, 1, 4, generator)
    hidden, keys, _ = exported.fp32[LATENT_GRAPH].run(
        None, {k: v.numpy() for k, v in inputs.items()})
    assert keys.shape[3] == N_LATENT_STEPS  # the keys of the steps it ran
    module = graph_module(model, LATENT_GRAPH, N_LATENT_STEPS)
    with torch.no_grad():
        for steps in (N_LATENT_STEPS - 1, N_LATENT_STEPS, N_LATENT_STEPS + 1):
            module.n_latent_steps = steps
            expected = module(*inputs.values())[0].numpy()
            diff = np.abs(hidden - expected).max()
            if steps == N_LATENT_STEPS:
                assert diff <= parity.FP32_TOLERANCE
            else:
                assert diff > LATENT_COUNT_MIN_DIFF, f"{steps} steps"


def test_latent_count_read_from_graph(exported):
    assert parity.latent_steps_in_graph(exported.fp32[LATENT_GRAPH],
                                        exported.model.config) == N_LATENT_STEPS


# -- the whole loop ---------------------------------------------------------------------------


@pytest.mark.parametrize("patching", ["fixed", "entropy"])
def test_onnx_loop_logits_match_torch_steps(exported, texts, patching):
    # 300 bytes: far past both windows, so full caches and the window mask are exercised
    diff = parity.check_sequence(exported.model, exported.fp32, exported.rules[patching],
                                 texts.held_out[:300])
    assert diff <= parity.FP32_TOLERANCE


@pytest.mark.parametrize("patching", ["fixed", "entropy"])
def test_greedy_256_bytes_match_reference(exported, texts, patching):
    rule = exported.rules[patching]
    prompt = texts.held_out[:40]
    stepper = parity.OnnxStepper(exported.fp32, exported.model.config)
    from_graphs = parity.greedy_generate(stepper, rule, prompt, 256)
    from_torch = generate(exported.model, rule, prompt, 256)
    assert len(from_torch) == 256
    assert from_graphs == from_torch


# -- int8 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_int8_leaves_no_fp32_weight_matmul_but_head(exported, graph):
    proto = onnx.load(str(exported.int8_paths[graph]))
    assert weight_matmul_nodes(proto) == list(exported.reports[graph].fp32_nodes)
    assert "MatMulInteger" in {node.op_type for node in proto.graph.node}


def test_int8_quantizes_embedding_tables(exported):
    proto = onnx.load(str(exported.int8_paths[ENCODER_GRAPH]))
    tables = {t.name: t.data_type for t in proto.graph.initializer}
    lookups = embedding_nodes(proto)
    assert len(lookups) == 1 + len(exported.model.config.ngram_sizes)
    for name in lookups:
        node = next(n for n in proto.graph.node if n.name == name)
        # quantize_dynamic stores Gather tables in the activation type, uint8
        assert tables[node.input[0]] == onnx.TensorProto.UINT8, name


def test_int8_keeps_head_fp32(exported):
    report = exported.reports[DECODER_GRAPH]
    assert report.fp32_nodes == ("head/MatMul",)
    proto = onnx.load(str(exported.int8_paths[DECODER_GRAPH]))
    assert "head/MatMul" in {node.name for node in proto.graph.node}


def test_int8_files_much_smaller(exported):
    fp32 = sum(p.stat().st_size for p in exported.fp32_paths.values())
    int8 = sum(p.stat().st_size for p in exported.int8_paths.values())
    # int8 weights are a quarter of fp32, but in a model this small the fp32 head, the
    # scales and the graph nodes are a large share. Default-size bundles reach about 0.27.
    assert int8 < 0.5 * fp32


def test_int8_close_to_fp32_on_held_out_text(exported, texts):
    rule = exported.rules["fixed"]
    fp32 = parity.measure_text(exported.fp32, exported.model.config, texts.held_out, rule)
    int8 = parity.measure_text(exported.int8, exported.model.config, texts.held_out, rule)
    gate = parity.int8_gate(fp32, int8, len(texts.held_out))
    # the trained model is far better than chance (8.04 bits per byte)
    assert fp32.bpb < 5.0
    assert gate["bpb_increase"] <= parity.INT8_MAX_BPB_INCREASE
    assert gate["top1_agreement"] >= parity.INT8_MIN_TOP1_AGREEMENT
    assert gate["passed"]


def test_fp32_bpb_matches_torch(exported, texts):
    rule = exported.rules["fixed"]
    data = texts.held_out[:512]
    logits = parity.text_logits(parity.OnnxStepper(exported.fp32, exported.model.config),
                                data, rule)
    byte_ids, patch_ids = sequence_tensors(data, rule)
    with torch.no_grad():
        expected = exported.model(byte_ids, patch_ids)[0].numpy()
    assert abs(parity.bits_per_byte(logits, data) - parity.bits_per_byte(expected, data)) < 1e-4
