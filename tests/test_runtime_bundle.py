"""Bundle loading and validation: every broken bundle gets a BundleError naming the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from runtime_bundles import TinyRun, read_manifest, shared_bundle, write_manifest

from elr_runtime.bundle import BundleError, file_sha256, load_bundle
from elr_runtime.graph_io import (
    BUNDLE_FORMAT_VERSION,
    DECODER_GRAPH,
    ENCODER_GRAPH,
    GLOBAL_GRAPH,
    GRAPH_NAMES,
    LATENT_GRAPH,
    graph_filename,
)
from elr_runtime.session import SessionConfig, open_sessions, session_options


@pytest.fixture(scope="module")
def run(tmp_path_factory, text_dir: Path) -> TinyRun:
    return shared_bundle(tmp_path_factory, text_dir)


@pytest.fixture
def bundle(run: TinyRun, tmp_path: Path) -> Path:
    """A private copy of the session's bundle that a test may damage."""
    copy = tmp_path / "bundle"
    shutil.copytree(run.bundle, copy)
    return copy


def edit_manifest(bundle: Path, **changes) -> None:
    manifest = read_manifest(bundle)
    manifest.update(changes)
    write_manifest(bundle, manifest)


def replace_file(bundle: Path, name: str, source: Path) -> None:
    """Put `source` in the bundle under `name` and record its sha256, as a careless copy would."""
    shutil.copyfile(source, bundle / name)
    manifest = read_manifest(bundle)
    manifest["files"][name] = file_sha256(bundle / name)
    write_manifest(bundle, manifest)


def test_valid_bundle_loads(run):
    loaded = load_bundle(run.bundle)
    assert loaded.precisions == ("fp32", "int8")
    assert loaded.n_latent_steps == 2
    assert loaded.table_path is not None and loaded.table_path.is_file()
    assert loaded.caches[ENCODER_GRAPH].window == loaded.model_config["local_window"]
    assert loaded.caches[GLOBAL_GRAPH] == loaded.caches[LATENT_GRAPH]
    assert loaded.graph_path(DECODER_GRAPH, "int8").name == graph_filename(DECODER_GRAPH, "int8")


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="bundle not found"):
        load_bundle(tmp_path / "nowhere")


def test_file_instead_of_directory(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(BundleError, match="is a file, not a bundle directory"):
        load_bundle(path)


def test_missing_manifest(bundle):
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="has no manifest.json.*re-run elr-export"):
        load_bundle(bundle)


def test_manifest_not_json(bundle):
    (bundle / "manifest.json").write_text("{ truncated")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)


def test_newer_format_version(bundle):
    edit_manifest(bundle, format_version=BUNDLE_FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match="newer than this runtime reads.*upgrade elr-lrt"):
        load_bundle(bundle)


@pytest.mark.parametrize("version", [0, "1", None, True])
def test_invalid_format_version(bundle, version):
    edit_manifest(bundle, format_version=version)
    with pytest.raises(BundleError, match="invalid format_version"):
        load_bundle(bundle)


def test_missing_manifest_key(bundle):
    manifest = read_manifest(bundle)
    del manifest["caches"]
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="'caches' is missing"):
        load_bundle(bundle)


def test_tampered_file(bundle):
    path = bundle / graph_filename(DECODER_GRAPH, "fp32")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256.*re-run elr-export"):
        load_bundle(bundle)


def test_tampered_file_loads_without_checksums(bundle):
    path = bundle / graph_filename(DECODER_GRAPH, "fp32")
    path.write_bytes(path.read_bytes() + b"\0")
    assert load_bundle(bundle, verify_checksums=False).precisions == ("fp32", "int8")


def test_missing_graph_file(bundle):
    (bundle / graph_filename(GLOBAL_GRAPH, "int8")).unlink()
    with pytest.raises(BundleError, match="lists 'global_step.int8.onnx' but the file is missing"):
        load_bundle(bundle)


def test_missing_table(bundle):
    (bundle / "frequency_table.elrt").unlink()
    with pytest.raises(BundleError, match="frequency_table.elrt' but the file is missing"):
        load_bundle(bundle)


def test_file_outside_bundle(bundle):
    manifest = read_manifest(bundle)
    manifest["files"]["../elsewhere.onnx"] = "0" * 64
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="not a plain file name"):
        load_bundle(bundle)


def test_graph_not_listed_in_files(bundle):
    manifest = read_manifest(bundle)
    del manifest["files"][graph_filename(ENCODER_GRAPH, "fp32")]
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="not listed with a sha256"):
        load_bundle(bundle)


def test_changed_special_ids(bundle):
    manifest = read_manifest(bundle)
    manifest["special_ids"]["eos"] = 300
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="special ids"):
        load_bundle(bundle)


def test_changed_io_names(bundle):
    manifest = read_manifest(bundle)
    manifest["io"][DECODER_GRAPH]["inputs"][0] = "hidden"
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="decoder_step the inputs"):
        load_bundle(bundle)


def test_unknown_precision(bundle):
    manifest = read_manifest(bundle)
    manifest["graphs"][ENCODER_GRAPH]["fp16"] = graph_filename(ENCODER_GRAPH, "fp32")
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="unknown precision 'fp16'"):
        load_bundle(bundle)


def test_precision_not_in_bundle(bundle):
    manifest = read_manifest(bundle)
    for graph in GRAPH_NAMES:
        del manifest["graphs"][graph]["int8"]
    write_manifest(bundle, manifest)
    loaded = load_bundle(bundle)
    assert loaded.precisions == ("fp32",)
    with pytest.raises(BundleError, match="no int8 graphs.*--precision fp32"):
        loaded.graph_path(ENCODER_GRAPH, "int8")


def test_entropy_bundle_without_table(bundle):
    edit_manifest(bundle, table=None)
    with pytest.raises(BundleError, match="entropy patching but its manifest names no"):
        load_bundle(bundle)


def test_graph_replaced_by_another_graph(bundle):
    name = graph_filename(DECODER_GRAPH, "fp32")
    replace_file(bundle, name, bundle / graph_filename(ENCODER_GRAPH, "fp32"))
    loaded = load_bundle(bundle)
    with pytest.raises(BundleError, match="decoder_step.fp32.onnx has inputs.*another graph"):
        open_sessions(loaded, "fp32")


def test_global_graph_replaced_by_latent_loop(bundle):
    # same inputs and cache layout, but a different output name
    name = graph_filename(GLOBAL_GRAPH, "int8")
    replace_file(bundle, name, bundle / graph_filename(LATENT_GRAPH, "int8"))
    with pytest.raises(BundleError, match="another graph"):
        open_sessions(load_bundle(bundle), "int8")


def test_cache_layout_mismatch(bundle):
    manifest = read_manifest(bundle)
    manifest["caches"][DECODER_GRAPH]["n_heads"] += 1
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="belongs to another model"):
        open_sessions(load_bundle(bundle), "fp32")


def test_cache_layer_count_mismatch(bundle):
    # one more layer means one more pair of cache inputs than the manifest's io lists
    manifest = read_manifest(bundle)
    manifest["caches"][DECODER_GRAPH]["n_layers"] += 1
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="past_keys.2"):
        load_bundle(bundle)


def test_file_that_is_not_onnx(bundle):
    replace_file(bundle, graph_filename(ENCODER_GRAPH, "fp32"), bundle / "manifest.json")
    with pytest.raises(BundleError, match="onnxruntime cannot load"):
        open_sessions(load_bundle(bundle), "fp32")


def test_session_options_turn_spinning_off_by_default():
    options = session_options(SessionConfig(threads=2))
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    spinning = session_options(SessionConfig(spin=True))
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_invalid_thread_count(threads):
    with pytest.raises(ValueError, match="threads"):
        SessionConfig(threads=threads)
