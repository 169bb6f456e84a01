"""Dynamic int8 quantization of exported graphs with onnxruntime's quantization tools.

Each fp32 graph first goes through `quant_pre_process` (onnxruntime.quantization), which
folds the exporter's weight Transposes into constant initializers: without it the weight
MatMuls read their weights through a Transpose node and `quantize_dynamic` skips them. Then
`quantize_dynamic` turns every MatMul or Gemm whose second input is a constant weight into
an int8-weight MatMulInteger, which quantizes its activations to uint8 on every call. With
`QuantizationSettings.embeddings` it also stores the embedding tables as uint8 rows that
are dequantized after the lookup.

What stays fp32: LayerNorms, the rotary embedding, the attention score and weighted-sum
MatMuls (both inputs are activations), the weight MatMuls of the modules listed in
`QuantizationSettings.fp32_modules` (the output head by default), and the embedding tables
when `embeddings` is off.

Static (QDQ) quantization is not offered. NOTE: an earlier trial of static QDQ with default
settings on this stack (torch 2.13, onnxruntime 1.32) reached only about 30 % top-1
agreement, because the causal mask's -inf gets an infinite scale; it was not re-measured.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.onnx_model import ONNXModel
from onnxruntime.quantization.shape_inference import quant_pre_process

logger = logging.getLogger(__name__)

QUANTIZED_OP_TYPES = ("MatMul", "Gemm")
EMBEDDING_OP_TYPE = "Gather"


@dataclass(frozen=True)
class QuantizationSettings:
    """Settings of the dynamic int8 quantization, recorded in the bundle manifest."""

    # Module paths (node name prefixes) whose weight MatMuls stay fp32; "head" is the
    # output projection to byte logits, where int8 rounding moves the top-1 byte most.
    fp32_modules: tuple[str, ...] = ("head",)
    # One scale per output column instead of one per weight matrix: more accurate, and
    # the extra scales cost a few bytes per column.
    per_channel: bool = True
    # 7-bit weights, which avoid the u8s8 overflow of x86 AVX2 kernels without VNNI but lose
    # precision. Off, because aarch64 and VNNI kernels do not overflow.
    reduce_range: bool = False
    # Store the byte and n-gram embedding tables as 8-bit too: uint8, the type quantize_dynamic
    # uses for Gather, dequantized after the lookup. They are most of the encoder's weights,
    # so this cuts the encoder file about 4x.
    embeddings: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fp32_modules"] = list(self.fp32_modules)
        op_types = [*QUANTIZED_OP_TYPES, *((EMBEDDING_OP_TYPE,) if self.embeddings else ())]
        out.update(method="dynamic", weight_type="int8", activation_type="uint8",
                   embedding_type="uint8" if self.embeddings else "float32",
                   op_types=op_types, pre_process="quant_pre_process")
        return out


@dataclass(frozen=True)
class QuantizationReport:
    """Names of the quantized nodes and of the weight MatMuls kept fp32 in one graph."""

    quantized_nodes: tuple[str, ...]
    fp32_nodes: tuple[str, ...]


def weight_matmul_nodes(proto: onnx.ModelProto) -> list[str]:
    """Return the names of MatMul and Gemm nodes whose second input is an initializer."""
    initializers = {tensor.name for tensor in proto.graph.initializer}
    return [node.name for node in proto.graph.node
            if node.op_type in QUANTIZED_OP_TYPES and node.input[1] in initializers]


def embedding_nodes(proto: onnx.ModelProto) -> list[str]:
    """Return the names of Gather nodes that look up rows of an initializer table."""
    initializers = {tensor.name for tensor in proto.graph.initializer}
    return [node.name for node in proto.graph.node
            if node.op_type == EMBEDDING_OP_TYPE and node.input[0] in initializers]


def _in_modules(node_name: str, modules: tuple[str, ...]) -> bool:
    return any(node_name == m or node_name.startswith(m + "/") or node_name.startswith(m + ".")
               for m in modules)


def _gemm_as_matmul(path: Path) -> onnx.ModelProto:
    """Rewrite Gemm nodes at `path` as MatMul (+ Add) nodes named "<name>_MatMul".

    quantize_dynamic (onnxruntime 1.32) makes the same rewrite before it matches node names,
    so a Gemm named in nodes_to_quantize would be skipped without a warning. Rewriting first
    lets the caller name the MatMul that quantize_dynamic sees.
    """
    model = ONNXModel(onnx.load(str(path)))
    model.replace_gemm_with_matmul()
    onnx.save_model(model.model, str(path))
    return model.model


def quantize_graph(fp32_path: str | Path, int8_path: str | Path,
                   settings: QuantizationSettings) -> QuantizationReport:
    """Write the dynamic int8 version of the graph at `fp32_path` to `int8_path`.

    The pre-processed intermediate model is written beside `int8_path` and removed after.
    Raises ValueError if no weight MatMul is left to quantize.
    """
    int8_path = Path(int8_path)
    prepared_path = int8_path.with_name(int8_path.stem + ".prepared.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared_path))
        prepared = _gemm_as_matmul(prepared_path)
        weights = weight_matmul_nodes(prepared)
        keep = tuple(name for name in weights if _in_modules(name, settings.fp32_modules))
        chosen = tuple(name for name in weights if name not in keep)
        if not chosen:
            raise ValueError(f"{fp32_path} has no weight MatMul outside {settings.fp32_modules} "
                             "to quantize")
        op_types = list(QUANTIZED_OP_TYPES)
        if settings.embeddings:
            chosen += tuple(embedding_nodes(prepared))
            op_types.append(EMBEDDING_OP_TYPE)
        quantize_dynamic(
            str(prepared_path), str(int8_path),
            op_types_to_quantize=op_types,
            nodes_to_quantize=list(chosen),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            weight_type=QuantType.QInt8,
        )
    finally:
        prepared_path.unlink(missing_ok=True)
    logger.info("quantized %d nodes of %s (%d weight MatMuls kept fp32)", len(chosen),
                fp32_path, len(keep))
    return QuantizationReport(quantized_nodes=chosen, fp32_nodes=keep)
