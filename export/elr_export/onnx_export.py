"""Export the four step functions of an ELRModel as ONNX graphs for the runtime.

Each graph gets a wrapper module whose `forward` arguments are the graph's input names in
`elr_runtime.graph_io`, so the exported graph's inputs and outputs carry exactly those names.
The export uses the torch.export-based exporter (`dynamo=True`) and writes one self-contained
file per graph. Node names are rewritten after export to follow the module hierarchy, for
example `decoder.layers.0.attn.qkv/MatMul`, so that profiles and quantization exclusions can
name a layer.

    graphs = export_graphs(model, out_dir, n_latent_steps=4, opset=20)
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from elr_export.config import ModelConfig
from elr_export.model import Cache, ELRModel, Stack
from elr_runtime.graph_io import (
    DECODER_GRAPH,
    EMPTY_POSITION,
    ENCODER_GRAPH,
    GLOBAL_GRAPH,
    GRAPH_INPUTS,
    GRAPH_NAMES,
    GRAPH_OUTPUTS,
    LATENT_GRAPH,
    N_SPECIAL_IDS,
    NEW_KEYS,
    NEW_VALUES,
    POSITIONS_INPUT,
    graph_filename,
    graph_inputs,
    graph_outputs,
    past_key_name,
    past_value_name,
)

logger = logging.getLogger(__name__)

# Opset 20 has a Gelu operator with the tanh approximation: one node per MLP instead of eight
# small ones, which matters because a decode step costs about as much per node as per
# multiply at these sizes.
DEFAULT_OPSET = 20
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_EXPORTER = "dynamo"
# The torch.export-based exporter emits opset 18 natively; older opsets need a version
# conversion that is known to fail on some ops.
MIN_OPSET = 18

# Sizes of the example inputs that the exporter traces. Sizes 0 and 1 are avoided on every
# dynamic axis because torch.export specializes an axis whose example size is 0 or 1.
EXAMPLE_BATCH = 2
EXAMPLE_NEW_LENGTH = 3
EXAMPLE_PAST_LENGTH = 2

# Upper bounds that the dynamic dimensions declare to torch.export. The ONNX graphs do not
# keep them, so onnxruntime accepts larger inputs.
_MAX_BATCH = 4096
_MAX_LENGTH = 1 << 20


# Attribute name of the model inside each wrapper module; node names drop it.
_WRAPPER_ATTRIBUTE = "model"


# -- wrapper modules, one per graph ---------------------------------------------------------


class StepGraph(nn.Module):
    """One step function of an ELRModel with the graph's inputs as positional arguments.

    The arguments follow `graph_io.graph_inputs`: the graph's own inputs, then the cache
    positions, then the keys and values of each layer. The latent loop's step count is fixed
    here, so the export unrolls the loop.
    """

    def __init__(self, model: ELRModel, graph: str, n_latent_steps: int) -> None:
        super().__init__()
        if graph not in GRAPH_NAMES:
            raise ValueError(f"unknown graph {graph!r}: expected one of {GRAPH_NAMES}")
        if graph == LATENT_GRAPH and n_latent_steps < 1:
            raise ValueError(f"n_latent_steps={n_latent_steps} must be at least 1")
        self.model = model
        self.graph = graph
        self.n_latent_steps = n_latent_steps
        self.n_own = len(GRAPH_INPUTS[graph])

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        own = inputs[:self.n_own]
        positions, *layers = inputs[self.n_own:]
        cache = Cache(positions, list(layers[0::2]), list(layers[1::2]))
        if self.graph == ENCODER_GRAPH:
            return self.model.encoder_step(*own, cache)
        if self.graph == GLOBAL_GRAPH:
            return self.model.global_step(*own, cache)
        if self.graph == LATENT_GRAPH:
            return self.model.latent_loop(*own, cache, self.n_latent_steps)
        return self.model.decoder_step(*own, cache)


def graph_module(model: ELRModel, graph: str, n_latent_steps: int) -> nn.Module:
    """Return the wrapper module of `graph`, in eval mode."""
    return StepGraph(model, graph, n_latent_steps).eval()


def input_names(model: ELRModel, graph: str) -> tuple[str, ...]:
    """Return the input names of `graph` for this model's layer counts."""
    return graph_inputs(graph, len(cache_stack(model, graph).layers))


def cache_stack(model: ELRModel, graph: str) -> Stack:
    """Return the layer stack whose KV cache `graph` reads and writes."""
    if graph == ENCODER_GRAPH:
        return model.encoder
    if graph in (GLOBAL_GRAPH, LATENT_GRAPH):
        return model.global_model
    if graph == DECODER_GRAPH:
        return model.decoder
    raise ValueError(f"unknown graph {graph!r}: expected one of {GRAPH_NAMES}")


# -- inputs and shapes ----------------------------------------------------------------------


def example_inputs(model: ELRModel, graph: str, batch: int, new_length: int, past_length: int,
                   generator: torch.Generator) -> dict[str, Tensor]:
    """Build random inputs of `graph`, keyed by graph input name.

    new_length is the number of new bytes for the encoder and decoder, and the patch length
    for the global step. The latent loop always takes one input vector. Position ids start
    at past_length plus a random offset per batch row, so rows sit at different positions.
    The cache has past_length slots holding the positions just before, in a random order
    like a ring buffer's, with one slot empty when there are three or more.
    """
    c = model.config
    stack = cache_stack(model, graph)
    step_length = 1 if graph in (GLOBAL_GRAPH, LATENT_GRAPH) else new_length
    offsets = torch.randint(0, 5, (batch, 1), generator=generator)
    position_ids = past_length + offsets + torch.arange(step_length)[None]  # (B, T)

    past_positions = offsets + torch.arange(past_length)[None]  # (B, C)
    order = torch.randperm(past_length, generator=generator)
    past_positions = past_positions[:, order]
    if past_length >= 3:
        past_positions[:, 0] = EMPTY_POSITION
    caches: dict[str, Tensor] = {POSITIONS_INPUT: past_positions}
    cache_shape = (batch, stack.n_heads, past_length, stack.head_dim)
    for layer in range(len(stack.layers)):
        caches[past_key_name(layer)] = torch.randn(cache_shape, generator=generator)
        caches[past_value_name(layer)] = torch.randn(cache_shape, generator=generator)

    if graph == ENCODER_GRAPH:
        own = {
            "byte_ids": torch.randint(0, N_SPECIAL_IDS, (batch, new_length), generator=generator),
            "prev_byte_ids": torch.randint(0, N_SPECIAL_IDS, (batch, c.ngram_history),
                                           generator=generator),
        }
    elif graph == GLOBAL_GRAPH:
        own = {"patch_hidden": torch.randn(batch, new_length, c.d_local, generator=generator)}
    elif graph == LATENT_GRAPH:
        own = {"latent_input": torch.randn(batch, 1, c.d_global, generator=generator)}
    elif graph == DECODER_GRAPH:
        own = {
            "encoder_hidden": torch.randn(batch, new_length, c.d_local, generator=generator),
            "global_context": torch.randn(batch, new_length, c.d_global, generator=generator),
        }
    else:
        raise ValueError(f"unknown graph {graph!r}: expected one of {GRAPH_NAMES}")
    return {**own, "position_ids": position_ids, **caches}


def dynamic_shapes(model: ELRModel, graph: str) -> dict[str, dict[int, torch.export.Dim]]:
    """Return the torch.export dynamic dimensions of `graph`'s inputs, keyed by input name.

    Batch, lengths and the cache capacity are dynamic; the capacity may be 0 (no cache
    slots), the others are at least 1.
    """
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    capacity = torch.export.Dim("capacity", min=0, max=_MAX_LENGTH)
    shapes: dict[str, dict[int, torch.export.Dim]] = {POSITIONS_INPUT: {0: batch, 1: capacity}}
    for layer in range(len(cache_stack(model, graph).layers)):
        shapes[past_key_name(layer)] = {0: batch, 2: capacity}
        shapes[past_value_name(layer)] = {0: batch, 2: capacity}
    if graph == ENCODER_GRAPH:
        new = torch.export.Dim("new_length", min=1, max=_MAX_LENGTH)
        own = {"byte_ids": {0: batch, 1: new}, "prev_byte_ids": {0: batch},
               "position_ids": {0: batch, 1: new}}
    elif graph == GLOBAL_GRAPH:
        patch = torch.export.Dim("patch_length", min=1, max=_MAX_LENGTH)
        own = {"patch_hidden": {0: batch, 1: patch}, "position_ids": {0: batch}}
    elif graph == LATENT_GRAPH:
        own = {"latent_input": {0: batch}, "position_ids": {0: batch}}
    elif graph == DECODER_GRAPH:
        new = torch.export.Dim("new_length", min=1, max=_MAX_LENGTH)
        own = {"encoder_hidden": {0: batch, 1: new}, "global_context": {0: batch, 1: new},
               "position_ids": {0: batch, 1: new}}
    else:
        raise ValueError(f"unknown graph {graph!r}: expected one of {GRAPH_NAMES}")
    return {**own, **shapes}


def io_shapes(config: ModelConfig, graph: str) -> dict[str, list[int | str]]:
    """Return the shape of every input and output of `graph`, with named dynamic axes."""
    if graph == ENCODER_GRAPH:
        layers, heads, width = config.n_encoder_layers, config.n_local_heads, config.d_local
    elif graph == DECODER_GRAPH:
        layers, heads, width = config.n_decoder_layers, config.n_local_heads, config.d_local
    else:
        layers, heads, width = config.n_global_layers, config.n_global_heads, config.d_global
    head_dim = width // heads
    step = "new_length" if graph in (ENCODER_GRAPH, DECODER_GRAPH) else 1
    growth = "new_length" if graph in (ENCODER_GRAPH, DECODER_GRAPH) else (
        "n_latent_steps" if graph == LATENT_GRAPH else 1)
    new: list[int | str] = [layers, "batch", heads, growth, head_dim]
    shapes: dict[str, list[int | str]] = {
        POSITIONS_INPUT: ["batch", "capacity"],
        NEW_KEYS: new, NEW_VALUES: new,
        "position_ids": ["batch", step],
    }
    for layer in range(layers):
        shapes[past_key_name(layer)] = ["batch", heads, "capacity", head_dim]
        shapes[past_value_name(layer)] = ["batch", heads, "capacity", head_dim]
    if graph == ENCODER_GRAPH:
        shapes.update(byte_ids=["batch", "new_length"],
                      prev_byte_ids=["batch", config.ngram_history],
                      hidden=["batch", "new_length", config.d_local])
    elif graph == GLOBAL_GRAPH:
        shapes.update(patch_hidden=["batch", "patch_length", config.d_local],
                      global_hidden=["batch", 1, config.d_global])
    elif graph == LATENT_GRAPH:
        shapes.update(latent_input=["batch", 1, config.d_global],
                      latent_hidden=["batch", 1, config.d_global])
    else:
        shapes.update(encoder_hidden=["batch", "new_length", config.d_local],
                      global_context=["batch", "new_length", config.d_global],
                      logits=["batch", "new_length", config.vocab_size])
    return shapes


def io_dtypes(config: ModelConfig, graph: str) -> dict[str, str]:
    """Return the element type of every input and output of `graph` ("int64" or "float32")."""
    integer = {"byte_ids", "prev_byte_ids", "position_ids", POSITIONS_INPUT}
    return {name: "int64" if name in integer else "float32" for name in io_shapes(config, graph)}


# -- export ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints, warnings and log lines below ERROR."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_graph(model: ELRModel, graph: str, path: str | Path, opset: int = DEFAULT_OPSET,
                 n_latent_steps: int = 1, exporter: str = DEFAULT_EXPORTER) -> onnx.ModelProto:
    """Export one graph of `model` to `path` as a single ONNX file and return it.

    exporter is "dynamo" (torch.export-based, the default of torch.onnx since torch 2.9) or
    "torchscript" (the legacy tracing exporter, deprecated but many times faster to run).
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is not supported: use {MIN_OPSET} or newer")
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}: expected one of {EXPORTERS}")
    module = graph_module(model, graph, n_latent_steps)
    generator = torch.Generator().manual_seed(0)
    inputs = example_inputs(model, graph, EXAMPLE_BATCH, EXAMPLE_NEW_LENGTH,
                            EXAMPLE_PAST_LENGTH, generator)
    if exporter == "dynamo":
        proto = _export_dynamo(module, graph, inputs, opset)
    else:
        proto = _export_torchscript(module, graph, inputs, opset)
    name_nodes_by_module(proto)
    proto.graph.name = graph
    proto.doc_string = f"ELR-LRT {graph}"
    onnx.save_model(proto, str(path))
    return proto


def _export_dynamo(module: nn.Module, graph: str, inputs: dict[str, Tensor],
                   opset: int) -> onnx.ModelProto:
    dims = dynamic_shapes(module.model, graph)
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            module, tuple(inputs.values()), None, dynamo=True, verbose=False,
            input_names=list(inputs), output_names=list(graph_outputs(graph)),
            dynamic_shapes=(tuple(dims[name] for name in inputs),), opset_version=opset,
            optimize=True)
    if program is None:
        raise RuntimeError(f"torch.onnx.export returned no program for graph {graph!r}")
    return program.model_proto


def _export_torchscript(module: nn.Module, graph: str, inputs: dict[str, Tensor],
                        opset: int) -> onnx.ModelProto:
    axes = {name: {axis: dim.__name__ for axis, dim in dims.items()}
            for name, dims in dynamic_shapes(module.model, graph).items()}
    axes.update(output_dynamic_axes(graph))
    buffer = io.BytesIO()
    with torch.no_grad(), _quiet_exporter():
        torch.onnx.export(
            module, tuple(inputs.values()), buffer, dynamo=False,
            input_names=list(inputs), output_names=list(graph_outputs(graph)),
            dynamic_axes=axes, opset_version=opset)
    return onnx.load_from_string(buffer.getvalue())


def output_dynamic_axes(graph: str) -> dict[str, dict[int, str]]:
    """Return the dynamic axes of `graph`'s outputs, named for the TorchScript exporter."""
    new = {1: "batch", 3: "new_length"}
    axes: dict[str, dict[int, str]] = {NEW_KEYS: new, NEW_VALUES: new}
    first = GRAPH_OUTPUTS[graph][0]
    if graph in (ENCODER_GRAPH, DECODER_GRAPH):
        axes[first] = {0: "batch", 1: "new_length"}
    else:
        axes[first] = {0: "batch"}
    return axes


def export_graphs(model: ELRModel, out_dir: str | Path, n_latent_steps: int,
                  opset: int = DEFAULT_OPSET, exporter: str = DEFAULT_EXPORTER,
                  on_graph: Callable[[str, Path], None] | None = None) -> dict[str, Path]:
    """Export all four graphs as "<graph>.fp32.onnx" into `out_dir`.

    on_graph, when given, is called after each graph with its name and path.
    Returns the path of every graph, keyed by graph name.
    """
    model.eval()
    paths = {}
    for graph in GRAPH_NAMES:
        path = Path(out_dir) / graph_filename(graph, "fp32")
        export_graph(model, graph, path, opset, n_latent_steps, exporter)
        logger.info("exported %s to %s", graph, path)
        paths[graph] = path
        if on_graph is not None:
            on_graph(graph, path)
    return paths


# -- node names -----------------------------------------------------------------------------


def _module_path(node: onnx.NodeProto) -> str | None:
    """Return the dotted module path of a node, "" outside any module, None if unknown.

    The dynamo exporter writes one "<module path>: <class>" scope per enclosing module into
    the "namespace" metadata, separated by "/", then "<fx node>: <op>" for the node itself:
    ": Wrapper/model.decoder: Stack/model.decoder.layers.0: Block/linear_1: aten.linear".
    Its paths start with the wrapper's attribute "model", which is dropped; other scopes
    (the wrapper itself, torch's own tracing hooks) count as outside the model. The
    TorchScript exporter names nodes "/decoder/layers.0/MatMul_1" instead, with the model's
    modules directly below the root.
    """
    namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), None)
    if namespace is not None:
        scopes = namespace.split("/")[:-1]
        path = scopes[-1].split(": ", 1)[0] if scopes else ""
        if path.startswith(_WRAPPER_ATTRIBUTE + "."):
            return path[len(_WRAPPER_ATTRIBUTE) + 1:]
        return ""
    if node.name.startswith("/"):
        return ".".join(node.name.split("/")[1:-1])
    return None


def name_nodes_by_module(proto: onnx.ModelProto) -> None:
    """Rename every node to "<module path>/<op type>", numbered where the name repeats.

    For example "decoder.layers.0.attn.qkv/MatMul"; nodes outside any module of the model
    get their op type alone, and nodes whose module is unknown keep their names. The
    exporter's metadata is dropped, because its per-node notes can take more space than the
    weights of a small model.
    """
    used = Counter(node.name for node in proto.graph.node)
    for node in proto.graph.node:
        path = _module_path(node)
        del node.metadata_props[:]
        if path is None:
            continue
        base = f"{path}/{node.op_type}" if path else node.op_type
        count = used[base]
        used[base] += 1
        node.name = base if count == 0 else f"{base}_{count}"
