"""elr-train: train an ELR-LRT model on text files.

    elr-train DATA [DATA ...] --out CHECKPOINT_DIR [options]
    torchrun --nproc-per-node 2 -m elr_export.train_cli DATA --out DIR   # data parallel (gloo)

Each file is one document; the last --val-fraction of each is held out for validation.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from elr_export.checkpoint import CONFIG_NAME, CheckpointError, load_checkpoint
from elr_export.config import PATCHING_MODES, ModelConfig
from elr_export.data import (
    DataError,
    expand_paths,
    mean_patch_length,
    patch_documents,
    read_documents,
    split_documents,
)
from elr_export.model import ELRModel, estimate_flops_per_byte
from elr_export.train import TrainConfig, Trainer, init_distributed
from elr_runtime.patcher import FrequencyTable, Patcher, TableBuilder, calibrate_threshold
from elr_runtime.patching import PatchRule

logger = logging.getLogger("elr-train")

# Command-line flags for model config fields: flag name -> (field, type).
MODEL_FLAGS = {
    "--d-local": ("d_local", int), "--d-global": ("d_global", int),
    "--n-local-heads": ("n_local_heads", int), "--n-global-heads": ("n_global_heads", int),
    "--n-encoder-layers": ("n_encoder_layers", int),
    "--n-decoder-layers": ("n_decoder_layers", int),
    "--n-global-layers": ("n_global_layers", int), "--local-window": ("local_window", int),
    "--global-window": ("global_window", int), "--ngram-buckets": ("ngram_buckets", int),
    "--dropout": ("dropout", float), "--fixed-patch-length": ("fixed_patch_length", int),
}


def build_parser() -> argparse.ArgumentParser:
    defaults_model = ModelConfig()
    defaults_train = TrainConfig()
    p = argparse.ArgumentParser(
        prog="elr-train", description="Train an ELR-LRT byte-level model on text files. "
        "Each file is one document; bytes in any encoding are accepted.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", nargs="+", help="text files, directories or glob patterns")
    p.add_argument("--out", required=True, type=Path,
                   help="checkpoint directory to write (model.safetensors, config.json, table)")
    p.add_argument("--resume", action="store_true",
                   help="continue training from the checkpoint in --out")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction at the end of every document held out for validation")

    g = p.add_argument_group("patching")
    g.add_argument("--patching", choices=PATCHING_MODES, default=defaults_model.patching,
                   help="entropy: C++ entropy patcher; fixed: --fixed-patch-length bytes; "
                   "byte: one byte per patch")
    g.add_argument("--table", type=Path, help="existing frequency table file to use instead "
                   "of building one from the training split")
    g.add_argument("--context-length", type=int, default=4,
                   help="bytes of context in a newly built frequency table (1-8)")
    g.add_argument("--target-patch-length", type=float, default=4.5,
                   help="mean patch length in bytes that the entropy threshold is calibrated to")
    g.add_argument("--max-patch-length", type=int, default=16, help="maximum patch length in bytes")
    g.add_argument("--boundary-bytes", default="\\n",
                   help="bytes after which a patch always ends, as a Python escape string "
                   "(empty for none)")

    g = p.add_argument_group("model")
    for flag, (name, kind) in MODEL_FLAGS.items():
        g.add_argument(flag, type=kind, default=getattr(defaults_model, name), dest=name)

    g = p.add_argument_group("optimisation")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults_train, field.name)
        if isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                           dest=field.name)
        elif field.name == "budget_clock":
            g.add_argument(flag, choices=("wall", "cpu"), default=default, dest=field.name,
                           help="what --time-budget-s counts: elapsed time, or this "
                                "process's CPU time (fair when runs share the machine)")
        else:
            g.add_argument(flag, type=type(default), default=default, dest=field.name)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: all cores / processes)")
    return p


def parse_boundary_bytes(text: str) -> bytes:
    try:
        return text.encode("latin-1").decode("unicode_escape").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError) as err:
        raise ValueError(f"--boundary-bytes {text!r} is not a valid escape string: {err}") from err


def build_rule(args: argparse.Namespace, model_config: ModelConfig, train_docs: list[bytes],
               ) -> tuple[PatchRule, FrequencyTable | None, dict | None]:
    """Build (or load) the frequency table and calibrate the entropy threshold."""
    if model_config.patching != "entropy":
        return PatchRule(model_config.patching, None, model_config.fixed_patch_length), None, None
    if args.table is not None:
        table = FrequencyTable.load(str(args.table))
        logger.info("loaded frequency table %s (%d contexts)", args.table, table.n_contexts)
    else:
        started = time.perf_counter()
        builder = TableBuilder(context_length=args.context_length)
        for doc in train_docs:
            builder.add_document(doc)
        table = builder.finalize()
        logger.info("built frequency table: %d contexts, %.1f MB, k=%d, in %.1f s",
                    table.n_contexts, table.size_bytes / 1e6, table.context_length,
                    time.perf_counter() - started)
    boundary = parse_boundary_bytes(args.boundary_bytes)
    threshold = calibrate_threshold(table, train_docs, args.target_patch_length,
                                    max_patch_length=args.max_patch_length,
                                    boundary_bytes=boundary)
    patcher = Patcher(table, threshold=threshold, max_patch_length=args.max_patch_length,
                      boundary_bytes=boundary)
    logger.info("calibrated entropy threshold %.4f bits for a mean patch length of %.2f bytes",
                threshold, args.target_patch_length)
    return PatchRule("entropy", patcher), table, patcher.settings()


def run(args: argparse.Namespace) -> int:
    distributed = init_distributed()
    world = int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1
    threads = args.threads if args.threads is not None else max(1, (os.cpu_count() or 1) // world)
    if threads < 1:
        raise ValueError(f"--threads {threads} must be at least 1")
    torch.set_num_threads(threads)

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train_config = TrainConfig(**{k: v for k, v in vars(args).items() if k in train_fields})
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction {args.val_fraction} must be between 0 and 1")

    # the output directory: a new one, or an existing checkpoint with --resume
    resumed = None
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file: pass a directory for the checkpoint")
    if args.resume:
        resumed = load_checkpoint(args.out)
    elif args.out.exists() and (args.out / CONFIG_NAME).exists():
        raise ValueError(f"{args.out} already contains a checkpoint: pass --resume to continue it "
                         "or choose another --out")
    elif args.out.exists() and any(args.out.iterdir()):
        raise ValueError(f"{args.out} exists and is not empty: choose another --out")

    # data
    documents = read_documents(expand_paths(args.data))
    train_docs, val_docs = split_documents(documents, args.val_fraction)
    if not train_docs or not val_docs:
        raise DataError("the data is too small to split into training and validation parts")

    # model, table and patch boundaries
    torch.manual_seed(train_config.seed)
    if resumed is not None:
        model, table, patcher_settings = resumed.model, resumed.table, resumed.patcher_settings
        rule = resumed.patch_rule()
    else:
        model_fields = {name: getattr(args, name) for name, _ in MODEL_FLAGS.values()}
        model_config = ModelConfig(patching=args.patching, **model_fields)
        model = ELRModel(model_config)
        rule, table, patcher_settings = build_rule(args, model_config, train_docs)
    cache = args.out.parent / f".{args.out.name}.patch-cache"
    train_patched = patch_documents(train_docs, rule, cache)
    val_patched = patch_documents(val_docs, rule, cache)
    patch_len = mean_patch_length(train_patched)
    logger.info("model: %s parameters; mean patch length %.2f bytes; about %.2f MFLOPs per byte",
                f"{model.n_params():,}", patch_len,
                estimate_flops_per_byte(model.config, patch_len) / 1e6)
    logger.info("data: %s training bytes, %s validation bytes in %d documents",
                f"{sum(len(d) for d in train_docs):,}", f"{sum(len(d) for d in val_docs):,}",
                len(documents))

    extra = {"data": [str(p) for p in expand_paths(args.data)],
             "val_fraction": args.val_fraction, "threads": threads, "world_size": world}
    trainer = Trainer(model, train_config, train_patched, val_patched, args.out, table,
                      patcher_settings, extra)
    if resumed is not None:
        trainer.resume_from(resumed)
        logger.info("resumed %s at step %d", args.out, trainer.state.step)
    try:
        state = trainer.run()
    except KeyboardInterrupt:
        print(f"elr-train: interrupted; checkpoint saved in {args.out}", file=sys.stderr)
        return 130
    if trainer.rank == 0:
        print(f"step {state.step}: validation {state.last_val_bpb:.4f} bits per byte; "
              f"checkpoint {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return run(args)
    except (CheckpointError, DataError, ValueError) as err:
        print(f"elr-train: error: {err}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
