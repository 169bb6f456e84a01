"""Bits per byte, mean patch length and estimated FLOPs per byte of a checkpoint on text files.

    elr-eval CHECKPOINT FILE [FILE ...] [--seq-len 512] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from elr_export.data import (
    DataError,
    PatchedDocument,
    eval_windows,
    expand_paths,
    mean_patch_length,
    patch_documents,
    read_documents,
    stack_windows,
)
from elr_export.model import ELRModel, estimate_flops_per_byte
from elr_runtime.cli import silence_stdout
from elr_runtime.graph_io import EOS_ID, PAD_ID

# Maximum window length in bytes. Attention over a window of n bytes computes n * n scores per
# head, so much longer windows run out of memory on small machines.
MAX_SEQ_LEN = 8192

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_bpb(model: ELRModel, docs: Sequence[PatchedDocument], seq_len: int,
                 batch_size: int = 16, max_windows: int | None = None,
                 autocast_dtype: torch.dtype | None = None) -> float:
    """Return bits per byte over every byte of `docs` (EOS predictions excluded)."""
    was_training = model.training
    model.eval()
    windows = eval_windows(docs, seq_len)
    if max_windows is not None and len(windows) > max_windows:
        step = len(windows) / max_windows
        windows = [windows[int(i * step)] for i in range(max_windows)]
    total_nats = 0.0
    total_bytes = 0
    for i in range(0, len(windows), batch_size):
        batch = stack_windows(windows[i:i + batch_size])
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            logits = model(batch["byte_ids"], batch["patch_ids"])
        targets = batch["targets"]
        byte_targets = targets.masked_fill(targets == EOS_ID, PAD_ID)
        nats = F.cross_entropy(logits.float().flatten(0, 1), byte_targets.flatten(),
                               ignore_index=PAD_ID, reduction="sum")
        total_nats += float(nats)
        total_bytes += int((byte_targets != PAD_ID).sum())
    model.train(was_training)
    return total_nats / max(total_bytes, 1) / math.log(2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elr-eval", description="Report bits per byte, mean patch length and estimated "
        "FLOPs per byte of a checkpoint on text files (each file is one document).")
    parser.add_argument("checkpoint", help="checkpoint directory written by elr-train")
    parser.add_argument("files", nargs="+", help="text files, directories or globs to evaluate on")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="window length in bytes (default: the training window length)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    from elr_export.checkpoint import CheckpointError, load_checkpoint

    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads {args.threads} must be at least 1")
            torch.set_num_threads(args.threads)
        ckpt = load_checkpoint(args.checkpoint)
        docs = patch_documents(read_documents(expand_paths(args.files)), ckpt.patch_rule())
        if args.batch_size < 1:
            raise ValueError(f"--batch-size {args.batch_size} must be at least 1")
        if args.seq_len is not None and not 2 <= args.seq_len <= MAX_SEQ_LEN:
            raise ValueError(f"--seq-len {args.seq_len} must be between 2 and {MAX_SEQ_LEN}")
        seq_len = args.seq_len or int(ckpt.training_state.get("seq_len", 512))
        bpb = evaluate_bpb(ckpt.model, docs, seq_len, args.batch_size)
    except (CheckpointError, DataError, ValueError) as err:
        print(f"elr-eval: error: {err}", file=sys.stderr)
        return 2

    patch_len = mean_patch_length(docs)
    result = {
        "bits_per_byte": round(bpb, 4),
        "mean_patch_length": round(patch_len, 3),
        "flops_per_byte": estimate_flops_per_byte(ckpt.config, patch_len),
        "bytes": sum(len(d.data) for d in docs),
        "parameters": ckpt.model.n_params(),
    }
    if args.json:
        report = json.dumps(result, indent=2)
    else:
        report = "\n".join([
            f"bits per byte      {result['bits_per_byte']:.4f}",
            f"mean patch length  {result['mean_patch_length']:.3f} bytes",
            f"FLOPs per byte     {result['flops_per_byte'] / 1e6:.2f} M (estimate)",
            f"bytes evaluated    {result['bytes']:,}",
            f"parameters         {result['parameters']:,}"])
    try:
        print(report, flush=True)
    except BrokenPipeError:
        # the reader closed the pipe (`elr-eval ... | head -1`): not an error
        silence_stdout()
    return 0


if __name__ == "__main__":
    sys.exit(main())
