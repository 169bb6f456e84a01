"""onnxruntime sessions for the four graphs of a bundle.

Thread spinning is off by default. With spinning on, onnxruntime's idle worker threads
busy-wait for the next operator instead of sleeping. On small step graphs that burns CPU time
and energy for little speed, which matters on a battery or a passively cooled board.
`SessionConfig(spin=True)` turns it back on.

Opening a session also checks the graph against the bundle. The input and output names and
element types must be those of `elr_runtime.graph_io`, and the fixed cache dimensions must
match the manifest, so a graph file swapped for another graph is caught before it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import (
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    NoSuchFile,
    NotImplemented,
    RuntimeException,
)

from elr_runtime.bundle import REEXPORT, Bundle, BundleError, CacheSpec
from elr_runtime.graph_io import (
    GRAPH_NAMES,
    NEW_KEYS,
    NEW_VALUES,
    POSITIONS_INPUT,
    graph_inputs,
    graph_outputs,
)

logger = logging.getLogger(__name__)

# Errors onnxruntime raises for a model it cannot load or run.
_ORT_ERRORS = (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile,
                NotImplemented, RuntimeException)

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_INTEGER_NAMES = frozenset({"byte_ids", "prev_byte_ids", "position_ids", POSITIONS_INPUT})


@dataclass(frozen=True)
class SessionConfig:
    """onnxruntime settings shared by the sessions of one generator."""

    threads: int = 1  # intra-op threads per session; 1 leaves the other cores free
    spin: bool = False  # let idle worker threads busy-wait (faster wake-up, much more CPU time)
    optimization: str = "all"  # graph optimisation level: disable, basic, extended or all

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) \
                or self.threads < 1:
            raise ValueError(f"threads={self.threads!r} must be an integer >= 1")
        if self.optimization not in _OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization={self.optimization!r} must be one of "
                             f"{tuple(_OPTIMIZATION_LEVELS)}")


def session_options(config: SessionConfig) -> ort.SessionOptions:
    """Build onnxruntime session options from `config`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads
    options.inter_op_num_threads = 1  # graphs run sequentially, so no inter-op pool is needed
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPTIMIZATION_LEVELS[config.optimization]
    spinning = "1" if config.spin else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return options


class GraphSession:
    """One graph's onnxruntime session, checked against the bundle when it is opened."""

    def __init__(self, graph: str, path: Path, cache: CacheSpec,
                 options: ort.SessionOptions) -> None:
        self.graph = graph
        self.path = path
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        except _ORT_ERRORS as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise BundleError(f"onnxruntime cannot load {path} as the {graph} graph "
                              f"({message}): {REEXPORT}") from None
        check_graph_signature(graph, path, self._session, cache)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph; return its outputs in the order of graph_io's output names."""
        try:
            return self._session.run(None, feeds)
        except _ORT_ERRORS as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise BundleError(f"the {self.graph} graph {self.path} failed to run ({message}), "
                              f"so it does not fit the bundle's manifest: {REEXPORT}") from None


def open_sessions(bundle: Bundle, precision: str,
                  config: SessionConfig | None = None) -> dict[str, GraphSession]:
    """Open a checked session for each of the four graphs of `bundle` at `precision`."""
    options = session_options(config or SessionConfig())
    sessions = {}
    for graph in GRAPH_NAMES:
        path = bundle.graph_path(graph, precision)
        sessions[graph] = GraphSession(graph, path, bundle.caches[graph], options)
        logger.debug("opened %s from %s", graph, path)
    return sessions


def check_graph_signature(graph: str, path: Path, session: ort.InferenceSession,
                          cache: CacheSpec) -> None:
    """Raise BundleError unless the session's inputs and outputs are those of `graph`.

    Checks names and order, element types, and the fixed sizes of the cache dimensions
    (n_layers, n_heads, head_dim) against the manifest.
    """
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    input_names = tuple(arg.name for arg in inputs)
    output_names = tuple(arg.name for arg in outputs)
    expected_inputs = graph_inputs(graph, cache.n_layers)
    expected_outputs = graph_outputs(graph)
    if input_names != expected_inputs or output_names != expected_outputs:
        raise BundleError(
            f"{path} has inputs {list(input_names)} and outputs {list(output_names)}, but the "
            f"{graph} graph has inputs {list(expected_inputs)} and outputs "
            f"{list(expected_outputs)}: the file holds another graph; {REEXPORT}")

    for arg in (*inputs, *outputs):
        expected_type = "tensor(int64)" if arg.name in _INTEGER_NAMES else "tensor(float)"
        if arg.type != expected_type:
            raise BundleError(f"{path}: {graph} {arg.name} has type {arg.type}, expected "
                              f"{expected_type}: {REEXPORT}")
        if arg.name in (NEW_KEYS, NEW_VALUES):
            # (n_layers, batch, n_heads, new_length, head_dim)
            _check_cache_shape(graph, path, arg.name, arg.shape, cache,
                               {0: cache.n_layers, 2: cache.n_heads, 4: cache.head_dim})
        elif arg.name.startswith(("past_keys.", "past_values.")):
            # (batch, n_heads, capacity, head_dim)
            _check_cache_shape(graph, path, arg.name, arg.shape, cache,
                               {1: cache.n_heads, 3: cache.head_dim})


def _check_cache_shape(graph: str, path: Path, name: str, shape: list[int | str | None],
                       cache: CacheSpec, expected: dict[int, int]) -> None:
    rank = 5 if name in (NEW_KEYS, NEW_VALUES) else 4
    if len(shape) != rank:
        raise BundleError(f"{path}: {graph} {name} has {len(shape)} dimensions, expected "
                          f"{rank}: {REEXPORT}")
    for axis, size in expected.items():
        if isinstance(shape[axis], int) and shape[axis] != size:
            raise BundleError(f"{path}: {graph} {name} has shape {shape} but the manifest's "
                              f"cache layout needs {cache.n_layers} layers, {cache.n_heads} "
                              f"heads of size {cache.head_dim}: the file belongs to another "
                              f"model; {REEXPORT}")
