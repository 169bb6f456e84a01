"""Worker for the torchrun test: trains a tiny model with DDP and records each rank's state.

    torchrun --nproc-per-node 2 tests/ddp_worker.py DATA_FILE OUT_DIR

Every rank writes OUT_DIR/rank<r>.json with its losses and a checksum of its parameters.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from elr_export.config import ModelConfig
from elr_export.data import patch_documents, split_documents
from elr_export.model import ELRModel
from elr_export.train import TrainConfig, Trainer, init_distributed
from elr_runtime.patching import PatchRule


def main() -> None:
    data_file, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    assert init_distributed(), "run this under torchrun with 2 processes"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ModelConfig(d_local=32, n_local_heads=2, d_global=64, n_global_heads=2,
                         n_global_layers=1, ngram_buckets=256, patching="fixed")
    model = ELRModel(config)
    train_docs, val_docs = split_documents([data_file.read_bytes()[:200_000]], 0.1)
    rule = PatchRule("fixed", None, config.fixed_patch_length)
    train_config = TrainConfig(seq_len=64, batch_size=8, max_steps=60, warmup_steps=5, lr=3e-3,
                               bf16=False, eval_interval=1000, checkpoint_interval=1000)
    trainer = Trainer(model, train_config, patch_documents(train_docs, rule),
                      patch_documents(val_docs, rule), out_dir / "ckpt", None, None, {})
    losses = []
    for _ in range(train_config.max_steps):
        loss, _ = trainer.train_step()
        trainer.state.step += 1
        losses.append(loss)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().numpy().tobytes())
    rank = dist.get_rank()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(
        {"losses": losses, "param_sha256": digest.hexdigest()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
