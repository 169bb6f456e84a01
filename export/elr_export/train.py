"""The training loop behind elr-train: AdamW, warm-up and cosine decay, DDP, checkpoints.

Runs on one process or under torchrun (torch.distributed with the gloo backend on CPU; every
rank builds the same frequency table and batches from its own seed).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from elr_export.checkpoint import Checkpoint, load_optimizer_state, save_checkpoint
from elr_export.data import PatchedDocument, WindowSampler, mean_patch_length
from elr_export.evaluate import MAX_SEQ_LEN, evaluate_bpb
from elr_export.model import ELRModel
from elr_runtime.graph_io import EOS_ID, PAD_ID
from elr_runtime.patcher import FrequencyTable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run (saved in the checkpoint's training state)."""

    seq_len: int = 512  # bytes per training window, BOS included
    batch_size: int = 32  # windows per optimizer step on each process
    max_steps: int = 2000  # optimizer steps; training also stops at time_budget_s
    time_budget_s: float = 0.0  # training-time budget in seconds; 0 means no limit
    budget_clock: str = "wall"  # "wall": elapsed time; "cpu": this process's CPU time, which
    # stays fair when several runs share the machine
    lr: float = 2e-3  # peak learning rate after warm-up
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    weight_decay: float = 0.1  # AdamW decay on weight matrices (not norms or embeddings)
    grad_clip: float = 1.0  # maximum global gradient norm
    bf16: bool = True  # bfloat16 autocast for the forward pass (fast on CPUs with AVX-512 BF16)
    eval_interval: int = 200  # steps between validation runs
    eval_windows: int = 64  # validation windows per periodic run (the final run uses all)
    checkpoint_interval: int = 500  # steps between checkpoints
    seed: int = 1337  # seeds the model init and the batch sampler

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "max_steps", "eval_interval",
                     "checkpoint_interval", "eval_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if not 16 <= self.seq_len <= MAX_SEQ_LEN:
            raise ValueError(f"seq_len={self.seq_len} must be between 16 and {MAX_SEQ_LEN}")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if self.time_budget_s < 0:
            raise ValueError(f"time_budget_s={self.time_budget_s} must not be negative")
        if self.budget_clock not in ("wall", "cpu"):
            raise ValueError(f"budget_clock={self.budget_clock!r} must be 'wall' or 'cpu'")


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over warmup_steps, then cosine decay over training progress in [0, 1]."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine)


def make_optimizer(model: ELRModel, config: TrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)


@dataclass
class RunState:
    step: int = 0
    elapsed_s: float = 0.0
    bytes_seen: int = 0
    best_val_bpb: float | None = None
    last_val_bpb: float | None = None


class Trainer:
    """Trains an ELRModel on patched documents and writes checkpoints to `out_dir`."""

    def __init__(self, model: ELRModel, config: TrainConfig, train_docs: list[PatchedDocument],
                 val_docs: list[PatchedDocument], out_dir: Path, table: FrequencyTable | None,
                 patcher_settings: dict[str, Any] | None, extra_state: dict[str, Any]) -> None:
        self.model = model
        self.config = config
        self.train_docs = train_docs
        self.val_docs = val_docs
        self.out_dir = out_dir
        self.table = table
        self.patcher_settings = patcher_settings
        self.extra_state = extra_state
        self.state = RunState()
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.optimizer = make_optimizer(model, config)
        self.ddp = DistributedDataParallel(model) if dist.is_initialized() else None
        self.sampler = WindowSampler(train_docs, config.seq_len, config.seed + self.rank)
        self.autocast = torch.bfloat16 if config.bf16 else None

    def resume_from(self, ckpt: Checkpoint) -> None:
        load_optimizer_state(ckpt.path, self.model, self.optimizer)
        run = ckpt.training_state.get("run", {})
        self.state = RunState(**{k: v for k, v in run.items() if k in RunState.__annotations__})
        # a different stream of batches after resuming, but still deterministic
        self.sampler = WindowSampler(self.train_docs, self.config.seq_len,
                                     self.config.seed + self.rank + 1000 * self.state.step)

    def progress(self) -> float:
        by_steps = self.state.step / self.config.max_steps
        if self.config.time_budget_s > 0:
            return max(by_steps, self.state.elapsed_s / self.config.time_budget_s)
        return by_steps

    def train_step(self) -> tuple[float, int]:
        batch = self.sampler.batch(self.config.batch_size)
        lr = learning_rate(self.config, self.state.step, self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        module = self.ddp or self.model
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast is not None):
            logits = module(batch["byte_ids"], batch["patch_ids"])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(),
                               ignore_index=PAD_ID)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        targets = batch["targets"]
        n_bytes = int(((targets != PAD_ID) & (targets != EOS_ID)).sum()) * self.world_size
        return loss.item(), n_bytes

    def validate(self, max_windows: int | None) -> float:
        return evaluate_bpb(self.model, self.val_docs, self.config.seq_len,
                            batch_size=self.config.batch_size, max_windows=max_windows,
                            autocast_dtype=self.autocast)

    @property
    def best_dir(self) -> Path:
        """Where the checkpoint with the lowest validation bits per byte so far is kept."""
        return self.out_dir.with_name(self.out_dir.name + "-best")

    def save(self, final: bool = False, path: Path | None = None) -> None:
        if self.rank != 0:
            return
        state = {**self.extra_state, "seq_len": self.config.seq_len,
                 "train_config": asdict(self.config), "run": asdict(self.state),
                 "final": final,
                 "mean_patch_length_train": mean_patch_length(self.train_docs)}
        target = path or self.out_dir
        save_checkpoint(target, self.model, self.table, self.patcher_settings,
                        training_state=state, optimizer=self.optimizer)
        logger.info("saved checkpoint %s at step %d", target, self.state.step)

    def run(self) -> RunState:
        """Train until max_steps or the time budget; Ctrl-C saves a checkpoint and returns."""
        config = self.config
        self.model.train()
        # with a time budget the step count is open-ended, so the bar shows the time left instead
        total = None if config.time_budget_s > 0 else config.max_steps
        bar = tqdm(total=total, initial=self.state.step, disable=self.rank != 0,
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        window_start, window_bytes = time.perf_counter(), 0
        clock = time.process_time if config.budget_clock == "cpu" else time.perf_counter
        try:
            while self.state.step < config.max_steps and self.progress() < 1.0:
                started = clock()
                loss, n_bytes = self.train_step()
                self.state.step += 1
                self.state.elapsed_s += clock() - started
                self.state.bytes_seen += n_bytes
                window_bytes += n_bytes
                bar.update(1)
                if self.state.step % 10 == 0:
                    now = time.perf_counter()
                    postfix = {"loss": f"{loss:.3f}", "bpb": f"{loss / math.log(2):.3f}",
                               "bytes_per_s": f"{window_bytes / (now - window_start):,.0f}",
                               "val_bpb": self.state.last_val_bpb}
                    if config.time_budget_s > 0:
                        left = max(0.0, config.time_budget_s - self.state.elapsed_s)
                        postfix["time_left"] = f"{left / 60:.1f}min"
                    bar.set_postfix(postfix)
                    window_start, window_bytes = now, 0
                if self.state.step % config.eval_interval == 0:
                    self._record_val(self.validate(config.eval_windows))
                if self.state.step % config.checkpoint_interval == 0:
                    self.save()
        except KeyboardInterrupt:
            bar.close()
            logger.warning("interrupted at step %d: saving a checkpoint", self.state.step)
            self.save()
            raise
        bar.close()
        if self.state.step < config.max_steps:
            logger.info("the time budget of %.0f s ended training at step %d",
                        config.time_budget_s, self.state.step)
        # every validation byte at the end; not compared with the periodic subset scores
        self._record_val(self.validate(None), keep_best=False)
        logger.info("step %d: validation %.4f bits per byte (all %d validation bytes)",
                    self.state.step, self.state.last_val_bpb,
                    sum(len(d.data) for d in self.val_docs))
        self.save(final=True)
        return self.state

    def _record_val(self, bpb: float, keep_best: bool = True) -> None:
        self.state.last_val_bpb = round(bpb, 4)
        if keep_best and (self.state.best_val_bpb is None or bpb < self.state.best_val_bpb):
            self.state.best_val_bpb = round(bpb, 4)
            # a small corpus overfits late in training, so the best model is kept apart
            self.save(path=self.best_dir)
        if self.rank == 0:
            tqdm.write(f"step {self.state.step}: val bpb {bpb:.4f}", file=sys.stderr)


def init_distributed() -> bool:
    """Join the torchrun process group (gloo) when started by torchrun. Returns True if so."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        return True
    return False
