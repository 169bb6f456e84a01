"""The model bundle: a directory of ONNX graphs, the frequency table and a manifest.

A bundle is assembled in a staging directory beside its target and renamed into place only
when it is complete. An export that fails or is interrupted therefore leaves no
half-written bundle, and any bundle already at the target stays unchanged:

    staging = create_staging(target)
    ...write graphs and the table into staging...
    write_manifest(staging, manifest)      # adds the sha256 of every file
    commit_bundle(staging, target)         # replaces an existing bundle at target

The target may be missing, an empty directory or an existing bundle; anything else (a
file, a directory with other content) is rejected so that no user data is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from elr_export.atomic_dir import make_staging_dir, replace_dir
from elr_export.config import ModelConfig
from elr_export.onnx_export import io_dtypes, io_shapes
from elr_runtime.graph_io import (
    BUNDLE_FORMAT_VERSION,
    GRAPH_NAMES,
    MANIFEST_NAME,
    SPECIAL_IDS,
    TABLE_NAME,
    graph_filename,
    graph_inputs,
    graph_outputs,
)

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")


class BundleError(ValueError):
    """A bundle target cannot be written, or a directory is not a bundle."""


def is_bundle_dir(path: Path) -> bool:
    """Return whether `path` is a directory with a manifest that has a format version."""
    manifest = path / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "format_version" in data


def check_target(target: Path) -> None:
    """Raise BundleError unless `target` is missing, an empty directory or a bundle."""
    if not target.exists():
        return
    if not target.is_dir():
        raise BundleError(f"--out {target} exists and is not a directory: choose a new path")
    if any(target.iterdir()) and not is_bundle_dir(target):
        raise BundleError(f"--out {target} is a directory with files and no bundle "
                          f"{MANIFEST_NAME}: choose a new or empty directory")


def create_staging(target: Path) -> Path:
    """Check `target` and create an empty staging directory beside it."""
    check_target(target)
    try:
        return make_staging_dir(target, "staging.")
    except OSError as err:
        reason = err.strerror or str(err)
        raise BundleError(f"cannot write the bundle next to {target} ({reason}): choose --out "
                          "in a writable directory") from err


def discard_staging(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def commit_bundle(staging: Path, target: Path) -> None:
    """Move the complete bundle in `staging` to `target`, replacing a bundle there."""
    check_target(target)
    replace_dir(staging, target)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def exporter_version() -> str:
    try:
        return metadata.version("elr-lrt")
    except metadata.PackageNotFoundError:
        return "unknown"


def cache_layout(config: ModelConfig) -> dict[str, dict[str, int]]:
    """Return the KV cache layout of every graph: layers, heads, head size, window."""
    layout = {}
    shapes = {"encoder_step": (config.n_encoder_layers, config.n_local_heads, config.d_local,
                               config.local_window),
              "global_step": (config.n_global_layers, config.n_global_heads, config.d_global,
                              config.global_window),
              "decoder_step": (config.n_decoder_layers, config.n_local_heads, config.d_local,
                               config.local_window)}
    shapes["latent_loop"] = shapes["global_step"]
    for graph in GRAPH_NAMES:
        n_layers, n_heads, width, window = shapes[graph]
        layout[graph] = {"n_layers": n_layers, "n_heads": n_heads,
                         "head_dim": width // n_heads, "window": window}
    return layout


def io_section(config: ModelConfig) -> dict[str, dict[str, Any]]:
    """Return the manifest's "io" section: names, shapes and element types per graph."""
    section = {}
    for graph in GRAPH_NAMES:
        shapes = io_shapes(config, graph)
        dtypes = io_dtypes(config, graph)
        inputs = graph_inputs(graph, cache_layout(config)[graph]["n_layers"])
        outputs = graph_outputs(graph)
        names = inputs + outputs
        section[graph] = {
            "inputs": list(inputs),
            "outputs": list(outputs),
            "shapes": {name: shapes[name] for name in names},
            "dtypes": {name: dtypes[name] for name in names},
        }
    return section


def build_manifest(config: ModelConfig, patcher_settings: Mapping[str, Any] | None,
                   has_table: bool, n_latent_steps: int, precisions: Iterable[str],
                   quantization: Mapping[str, Any] | None, parity: Mapping[str, Any],
                   opset: int) -> dict[str, Any]:
    """Return the manifest without its "files" section, which `write_manifest` fills in."""
    precisions = tuple(precisions)
    unknown = set(precisions) - set(PRECISIONS)
    if unknown or not precisions:
        raise ValueError(f"precisions {precisions} must be a non-empty subset of {PRECISIONS}")
    return {
        "format_version": BUNDLE_FORMAT_VERSION,
        "model": config.to_dict(),
        "patcher": dict(patcher_settings) if patcher_settings is not None else None,
        "table": TABLE_NAME if has_table else None,
        "n_latent_steps": n_latent_steps,
        "special_ids": dict(SPECIAL_IDS),
        "graphs": {graph: {p: graph_filename(graph, p) for p in precisions}
                   for graph in GRAPH_NAMES},
        "io": io_section(config),
        "caches": cache_layout(config),
        "quantization": dict(quantization) if quantization is not None else None,
        "parity": dict(parity),
        "opset": opset,
        "created_by": f"elr-export {exporter_version()}",
    }


def write_manifest(staging: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Check that every file the manifest names is in `staging`, hash them, write the manifest.

    Returns the manifest with its "files" section: the sha256 of every file in `staging`.
    Raises BundleError if a named file is missing or an unnamed file is present.
    """
    named = {name for files in manifest["graphs"].values() for name in files.values()}
    if manifest.get("table"):
        named.add(manifest["table"])
    present = {p.name for p in staging.iterdir() if p.name != MANIFEST_NAME}
    if named - present:
        raise BundleError(f"bundle files {sorted(named - present)} are missing from {staging}")
    if present - named:
        raise BundleError(f"{staging} has files the manifest does not name: "
                          f"{sorted(present - named)}")
    manifest = dict(manifest)
    manifest["files"] = {name: file_sha256(staging / name) for name in sorted(present)}
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    (staging / MANIFEST_NAME).write_text(text)
    return manifest
