"""Loading and validating a model bundle, the directory that elr-export writes.

A bundle contains the ONNX graphs (fp32 and/or int8), the patcher's frequency table when the
model uses entropy patching, and manifest.json. `load_bundle` checks everything it can
before a graph is run: the format version, the manifest's fields, the graph input and
output names against `elr_runtime.graph_io`, that every listed file exists, and that every
file matches its sha256. The graphs themselves are checked against the manifest when their
sessions are opened (see `elr_runtime.session`). Every failure raises `BundleError` with a
message that names the file and says what to do.

    bundle = load_bundle("runs/tiny/bundle")
    bundle.graph_path("decoder_step", "int8")
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elr_runtime.graph_io import (
    BUNDLE_FORMAT_VERSION,
    GRAPH_NAMES,
    MANIFEST_NAME,
    SPECIAL_IDS,
    graph_inputs,
    graph_outputs,
)

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
PATCHING_MODES = ("entropy", "fixed", "byte")
_HASH_CHUNK_BYTES = 1 << 20
REEXPORT = "re-run elr-export"


class BundleError(ValueError):
    """A bundle is missing, incomplete, corrupt, or from an unsupported format version."""


@dataclass(frozen=True)
class CacheSpec:
    """Shape and attention window of one graph's KV cache."""

    n_layers: int
    n_heads: int
    head_dim: int
    window: int  # positions each query attends to, itself included

    def layer_shape(self, capacity: int, batch: int = 1) -> tuple[int, int, int, int]:
        """Return the (batch, n_heads, capacity, head_dim) shape of one layer's keys."""
        return (batch, self.n_heads, capacity, self.head_dim)


@dataclass(frozen=True)
class Bundle:
    """A validated bundle: its paths and the manifest fields the runtime uses."""

    path: Path
    manifest: dict[str, Any]  # the whole manifest.json, for fields the runtime does not read
    model_config: dict[str, Any]  # the ModelConfig fields of the exported model
    patcher_settings: dict[str, Any] | None  # Patcher.from_settings keywords; entropy only
    table_path: Path | None  # frequency table file; entropy patching only
    n_latent_steps: int  # latent steps unrolled in the latent_loop graph
    caches: dict[str, CacheSpec]  # KV cache layout, keyed by graph name
    graph_files: dict[str, dict[str, Path]]  # graph name -> precision -> file
    precisions: tuple[str, ...]  # precisions in which every graph is present

    @property
    def ngram_history(self) -> int:
        """Number of ids before a new byte that the encoder's n-gram hashes read."""
        return max(self.model_config["ngram_sizes"]) - 1

    def graph_path(self, graph: str, precision: str) -> Path:
        if precision not in self.precisions:
            available = ", ".join(self.precisions)
            raise BundleError(f"bundle {self.path} has no {precision} graphs (it has "
                              f"{available}): choose --precision {self.precisions[0]} or "
                              f"{REEXPORT} with {precision}")
        return self.graph_files[graph][precision]


def load_bundle(path: str | Path, verify_checksums: bool = True) -> Bundle:
    """Read and validate the bundle at `path`; raise BundleError on any problem.

    verify_checksums=False skips hashing the files, which costs about one read of the
    bundle; every other check still runs.
    """
    root = Path(path)
    manifest = _read_manifest(root)
    _check_format_version(root, manifest)
    _check_keys(root, manifest)
    _check_special_ids(root, manifest["special_ids"])
    caches = _cache_specs(root, manifest["caches"])
    _check_io(root, manifest["io"], caches)
    files = _check_files(root, manifest["files"], verify_checksums)
    graph_files, precisions = _graph_files(root, manifest["graphs"], files)
    model_config = _model_config(root, manifest["model"])
    table_path = _table_path(root, manifest, model_config, files)

    bundle = Bundle(
        path=root,
        manifest=manifest,
        model_config=model_config,
        patcher_settings=manifest.get("patcher"),
        table_path=table_path,
        n_latent_steps=_positive_int(root, "n_latent_steps", manifest["n_latent_steps"]),
        caches=caches,
        graph_files=graph_files,
        precisions=precisions,
    )
    logger.info("loaded bundle %s (format %d, precisions %s, checksums %s)", root,
                manifest["format_version"], ",".join(precisions),
                "verified" if verify_checksums else "skipped")
    return bundle


# -- manifest checks ------------------------------------------------------------------------


def _read_manifest(root: Path) -> dict[str, Any]:
    if not root.exists():
        raise BundleError(f"bundle not found: {root}: pass the directory written by elr-export")
    if not root.is_dir():
        raise BundleError(f"{root} is a file, not a bundle directory: pass the directory "
                          "written by elr-export")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{root} has no {MANIFEST_NAME}, so it is not a complete bundle: "
                          f"{REEXPORT}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path} is not valid JSON ({error}): {REEXPORT}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} must contain a JSON object: {REEXPORT}")
    return manifest


def _check_format_version(root: Path, manifest: Mapping[str, Any]) -> None:
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"{root / MANIFEST_NAME} has an invalid format_version {version!r}: "
                          f"{REEXPORT}")
    if version > BUNDLE_FORMAT_VERSION:
        raise BundleError(f"bundle {root} has format version {version}, newer than this runtime "
                          f"reads ({BUNDLE_FORMAT_VERSION}): upgrade elr-lrt on this device")
    if version < BUNDLE_FORMAT_VERSION:
        raise BundleError(f"bundle {root} has format version {version}, older than this runtime "
                          f"reads ({BUNDLE_FORMAT_VERSION}): {REEXPORT} with this version")


_REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "n_latent_steps": int,
    "special_ids": dict,
    "graphs": dict,
    "io": dict,
    "caches": dict,
    "files": dict,
}


def _check_keys(root: Path, manifest: Mapping[str, Any]) -> None:
    problems = []
    for key, kind in _REQUIRED_KEYS.items():
        if key not in manifest:
            problems.append(f"'{key}' is missing")
        elif not isinstance(manifest[key], kind):
            problems.append(f"'{key}' has the wrong type {type(manifest[key]).__name__}")
    for key in ("patcher", "table"):
        if manifest.get(key) is not None and not isinstance(manifest[key], (dict, str)):
            problems.append(f"'{key}' has the wrong type {type(manifest[key]).__name__}")
    if problems:
        raise BundleError(f"{root / MANIFEST_NAME} is incomplete: {'; '.join(problems)}: "
                          f"{REEXPORT}")


def _check_special_ids(root: Path, special_ids: Mapping[str, Any]) -> None:
    if dict(special_ids) != SPECIAL_IDS:
        raise BundleError(f"bundle {root} uses special ids {dict(special_ids)} but this runtime "
                          f"uses {SPECIAL_IDS}: {REEXPORT} with this version of elr-lrt")


def _check_io(root: Path, io: Mapping[str, Any], caches: Mapping[str, CacheSpec]) -> None:
    for graph in GRAPH_NAMES:
        entry = io.get(graph)
        if not isinstance(entry, dict):
            raise BundleError(f"{root / MANIFEST_NAME} lists no inputs and outputs for graph "
                              f"{graph}: {REEXPORT}")
        for kind, expected in (("inputs", graph_inputs(graph, caches[graph].n_layers)),
                               ("outputs", graph_outputs(graph))):
            names = tuple(entry.get(kind) or ())
            if names != expected:
                raise BundleError(f"{root / MANIFEST_NAME} gives graph {graph} the {kind} "
                                  f"{list(names)} but this runtime expects {list(expected)}: "
                                  f"{REEXPORT} with this version of elr-lrt")


def _positive_int(root: Path, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"{root / MANIFEST_NAME} has {name}={value!r}, which must be a "
                          f"positive integer: {REEXPORT}")
    return value


def _cache_specs(root: Path, caches: Mapping[str, Any]) -> dict[str, CacheSpec]:
    specs = {}
    for graph in GRAPH_NAMES:
        entry = caches.get(graph)
        if not isinstance(entry, dict):
            raise BundleError(f"{root / MANIFEST_NAME} has no cache layout for graph {graph}: "
                              f"{REEXPORT}")
        values = {field: _positive_int(root, f"caches.{graph}.{field}", entry.get(field))
                  for field in ("n_layers", "n_heads", "head_dim", "window")}
        specs[graph] = CacheSpec(**values)
    return specs


def _model_config(root: Path, model: Mapping[str, Any]) -> dict[str, Any]:
    """Check the model config fields that the runtime reads and return a copy."""
    config = dict(model)
    patching = config.get("patching")
    if patching not in PATCHING_MODES:
        raise BundleError(f"{root / MANIFEST_NAME} has model.patching={patching!r}; expected "
                          f"one of {PATCHING_MODES}: {REEXPORT}")
    sizes = config.get("ngram_sizes")
    if not isinstance(sizes, list) or not sizes or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in sizes):
        raise BundleError(f"{root / MANIFEST_NAME} has model.ngram_sizes={sizes!r}; expected a "
                          f"list of integers >= 2: {REEXPORT}")
    if patching == "fixed":
        _positive_int(root, "model.fixed_patch_length", config.get("fixed_patch_length"))
    return config


# -- files ----------------------------------------------------------------------------------


def _check_files(root: Path, files: Mapping[str, Any], verify_checksums: bool) -> set[str]:
    """Check that every listed file exists (and matches its sha256); return the names."""
    for name, digest in files.items():
        if not _is_plain_name(name):
            raise BundleError(f"{root / MANIFEST_NAME} lists the file {name!r}, which is not a "
                              f"plain file name inside the bundle: {REEXPORT}")
        path = root / name
        if not path.is_file():
            raise BundleError(f"bundle manifest lists '{name}' but the file is missing from "
                              f"{root}: {REEXPORT}")
        if not verify_checksums:
            continue
        if not isinstance(digest, str):
            raise BundleError(f"{root / MANIFEST_NAME} has no sha256 for '{name}': {REEXPORT}")
        actual = file_sha256(path)
        if actual != digest.lower():
            raise BundleError(f"'{name}' in {root} does not match its sha256 in "
                              f"{MANIFEST_NAME}, so it was changed or damaged after export: "
                              f"{REEXPORT}")
    return set(files)


def _is_plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of the file at `path`, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _graph_files(root: Path, graphs: Mapping[str, Any],
                 files: set[str]) -> tuple[dict[str, dict[str, Path]], tuple[str, ...]]:
    """Return the graph file of every graph and precision, and the complete precisions."""
    graph_files: dict[str, dict[str, Path]] = {}
    for graph in GRAPH_NAMES:
        entry = graphs.get(graph)
        if not isinstance(entry, dict) or not entry:
            raise BundleError(f"{root / MANIFEST_NAME} lists no files for graph {graph}: "
                              f"{REEXPORT}")
        graph_files[graph] = {}
        for precision, name in entry.items():
            if precision not in PRECISIONS:
                raise BundleError(f"{root / MANIFEST_NAME} gives graph {graph} the unknown "
                                  f"precision {precision!r}; expected one of {PRECISIONS}: "
                                  f"{REEXPORT}")
            if name not in files:
                raise BundleError(f"graph file '{name}' of {root} is not listed with a sha256 "
                                  f"under 'files' in {MANIFEST_NAME}: {REEXPORT}")
            graph_files[graph][precision] = root / name
    precisions = tuple(p for p in PRECISIONS if all(p in graph_files[g] for g in GRAPH_NAMES))
    if not precisions:
        raise BundleError(f"bundle {root} has no precision in which all four graphs are "
                          f"present: {REEXPORT}")
    return graph_files, precisions


def _table_path(root: Path, manifest: Mapping[str, Any], model_config: Mapping[str, Any],
                files: set[str]) -> Path | None:
    table = manifest.get("table")
    if model_config["patching"] != "entropy":
        return None
    if not isinstance(table, str) or manifest.get("patcher") is None:
        raise BundleError(f"bundle {root} uses entropy patching but its manifest names no "
                          f"frequency table or patcher settings: {REEXPORT}")
    if table not in files:
        raise BundleError(f"frequency table '{table}' of {root} is not listed with a sha256 "
                          f"under 'files' in {MANIFEST_NAME}: {REEXPORT}")
    return root / table
