"""The ELR-LRT model: local byte encoder, global latent transformer over patches, local decoder.

Data flow for one sequence (BOS, b1, b2, ...), where patch p is a run of consecutive bytes:

    encoder:  bytes -> byte + hashed n-gram embeddings -> causal windowed layers -> hidden
    pooling:  each finished patch's hidden states -> [mean, last] -> one global input vector
    global:   causal windowed layers over patch vectors (and latent steps) -> global_hidden
    decoder:  hidden[t] + proj(global_hidden of the last patch finished before byte t+1)
              -> causal windowed layers -> logits of byte t+1

BOS always forms patch 0, so every byte has a finished patch before it. Whether byte t+1
starts a new patch is decided by the causal patcher from bytes up to t, so the decoder never
reads a future byte. `forward` runs a whole sequence for training; `encoder_step`,
`global_step`, `latent_loop` and `decoder_step` run the same computation in pieces with
explicit KV caches, one piece per ONNX graph of a bundle.

A KV cache (`Cache`) is a set of slots: the absolute position of each slot's key, then one
keys and one values tensor per layer, (batch, n_heads, capacity, head_dim). Slots may be in
any order and may be empty (graph_io.EMPTY_POSITION); a query attends to the slots and new positions
inside its window. The step functions return only the new positions' keys and values,
stacked (n_layers, batch, n_heads, new_length, head_dim); `Cache.append` adds them for the
next call. The runtime keeps the same slots in fixed-size ring buffers (see graph_io).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elr_export.config import ModelConfig
from elr_runtime.graph_io import PAD_ID

# Multipliers of the polynomial n-gram hash; one per n-gram size so that the tables of
# different sizes do not collide in the same pattern. Byte ids are below 264, so the base
# must exceed that for distinct n-grams to start from distinct polynomials.
_HASH_BASES = (269, 271, 277, 281, 283, 293, 307)


def ngram_hash_coefficients(sizes: tuple[int, ...], buckets: int) -> tuple[list[list[int]],
                                                                          list[int]]:
    """Coefficients of the polynomial n-gram hashes, reduced modulo `buckets`.

    The hash of the n-gram ending at t is sum over lags k < n of (id[t - k] + 1) * base**k,
    modulo buckets, with one base per size. Returns a (len(sizes), max(sizes)) table of
    base**k mod buckets (0 where k >= n) and, per size, the sum of its coefficients, which
    is the contribution of the + 1 terms.
    """
    width = max(sizes)
    table = [[pow(_HASH_BASES[n - 2], k, buckets) if k < n else 0 for k in range(width)]
             for n in sizes]
    return table, [sum(row) for row in table]


def ngram_hash_ids(ids_with_history: Tensor, sizes: tuple[int, ...], history: int,
                   buckets: int) -> Tensor:
    """Hash the n-grams of every size ending at each position into [0, buckets).

    ids_with_history: (B, history + T) int64, the `history` ids before the T positions first
    (history >= max(sizes) - 1). Returns (B, T, len(sizes)) int64.

    All sizes are hashed at once: one gather of the last max(sizes) ids of every position,
    one multiply by the coefficient table and one sum, so the exported graph has a handful of
    integer nodes whatever the sizes. Every term is below 265 * buckets, far from overflow,
    and the values are never negative, so truncating division gives the modulo.
    """
    table, offsets = ngram_hash_coefficients(sizes, buckets)
    width = len(table[0])
    length = ids_with_history.shape[1] - history
    device = ids_with_history.device
    lags = torch.arange(width, device=device)
    index = torch.arange(length, device=device)[:, None] + (history - lags)[None, :]  # (T, W)
    recent = ids_with_history[:, index]  # (B, T, W): id[t], id[t-1], ...
    coefficients = torch.tensor(table, dtype=torch.long, device=device)  # (S, W)
    sums = (recent[:, :, None, :] * coefficients).sum(dim=-1)  # (B, T, S)
    sums = sums + torch.tensor(offsets, dtype=torch.long, device=device)
    return sums - torch.div(sums, buckets, rounding_mode="trunc") * buckets


def rotary_tables(position_ids: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """Return the rotary (cos, sin) tables, each (B, 1, T, head_dim), for `rotate`.

    Computed once per stack and shared by its layers. The sin table carries the sign of the
    rotation, so that rotate(x) = x * cos + swap_halves(x) * sin.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                            device=position_ids.device) / head_dim))
    angles = position_ids.to(torch.float32)[:, None, :, None] * inv_freq  # (B, 1, T, D/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def rotate(x: Tensor, cos: Tensor, sin: Tensor, half: int) -> Tensor:
    """Apply the rotary embedding to x (..., T, 2 * half) with tables from `rotary_tables`.

    `half` is a Python int so that the exported graph splits at a constant, not at a size it
    computes from the input's shape.
    """
    first, second = x.split(half, dim=-1)
    return x * cos + torch.cat((second, first), dim=-1) * sin


def window_bias(position_ids: Tensor, past_positions: Tensor, window: int) -> Tensor:
    """Return the (B, 1, T, C + T) additive mask of a causal sliding window.

    Keys are the C cache slots at `past_positions` (B, C), then the T new positions. Query q
    may see key k when q - window < k <= q; other keys get -inf.
    """
    key_positions = torch.cat((past_positions, position_ids), dim=1)  # (B, C + T)
    distance = position_ids[:, :, None] - key_positions[:, None, :]  # (B, T, C + T)
    visible = (distance >= 0) & (distance < window)
    blocked = torch.full((), float("-inf"), device=position_ids.device)
    zero = torch.zeros((), device=position_ids.device)
    return torch.where(visible, zero, blocked)[:, None]


@dataclass
class Cache:
    """KV cache slots of one layer stack (see the module docstring)."""

    positions: Tensor  # (B, C) int64
    keys: list[Tensor]  # per layer (B, H, C, D)
    values: list[Tensor]

    def append(self, position_ids: Tensor, new_keys: Tensor, new_values: Tensor) -> Cache:
        """Return the cache with new positions (B, T) and their stacked keys and values added."""
        return Cache(torch.cat((self.positions, position_ids), dim=1),
                     [torch.cat((k, new), dim=2) for k, new in zip(self.keys, new_keys,
                                                                   strict=True)],
                     [torch.cat((v, new), dim=2) for v, new in zip(self.values, new_values,
                                                                   strict=True)])

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor], bias: Tensor,
                past_key: Tensor, past_value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Attend over the cache slots and the new positions; return (y, new k, new v)."""
        batch, length, width = x.shape
        # (B, T, 3 * W) -> (B, 3 * H, T, D): queries, keys and values of every head
        qkv = self.qkv(x).view(batch, length, 3 * self.n_heads, self.head_dim).transpose(1, 2)
        # queries and keys are rotated together, one rotation per layer
        qk, v = qkv.split((2 * self.n_heads, self.n_heads), dim=1)
        q, k = rotate(qk, *rotary, self.head_dim // 2).to(v.dtype).split(self.n_heads, dim=1)
        scale = self.head_dim ** -0.5

        if self.training:
            # training runs whole sequences: the fused kernel over one concatenated sequence
            key = torch.cat((past_key.to(k.dtype), k), dim=2)
            value = torch.cat((past_value.to(v.dtype), v), dim=2)
            y = F.scaled_dot_product_attention(q, key, value, attn_mask=bias.to(q.dtype),
                                               dropout_p=self.dropout, scale=scale)
        else:
            # cache slots and new positions are scored separately and never concatenated,
            # so a step reads the cache where it lies instead of copying it
            n_slots = past_key.shape[2]
            scores = torch.cat((q @ past_key.transpose(2, 3), q @ k.transpose(2, 3)), dim=3)
            weights = (scores * scale + bias).softmax(dim=-1)  # (B, H, T, C + T)
            y = weights[..., :n_slots] @ past_value + weights[..., n_slots:] @ v
        y = y.transpose(1, 2).reshape(batch, length, width)
        return self.out(y), k, v


class Block(nn.Module):
    """Pre-norm transformer layer: attention then MLP, each with a residual connection."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model, bias=False),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * d_model, d_model, bias=False),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor], bias: Tensor,
                past_key: Tensor, past_value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        normed = self.attn_norm(x)
        attended, key, value = self.attn(normed, rotary, bias, past_key, past_value)
        x = x + attended
        x = x + self.mlp(self.mlp_norm(x))
        return x, key, value


class Stack(nn.Module):
    """A stack of causal windowed layers with a stacked KV cache and a final norm."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, window: int,
                 config: ModelConfig) -> None:
        super().__init__()
        self.window = window
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.rope_base = config.rope_base
        self.layers = nn.ModuleList(
            Block(d_model, n_heads, config.mlp_ratio, config.dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def empty_cache(self, batch: int, device: torch.device | None = None) -> Cache:
        """Return a cache without slots."""
        shape = (batch, self.n_heads, 0, self.head_dim)
        return Cache(torch.zeros((batch, 0), dtype=torch.long, device=device),
                     [torch.zeros(shape, device=device) for _ in self.layers],
                     [torch.zeros(shape, device=device) for _ in self.layers])

    def forward(self, x: Tensor, position_ids: Tensor,
                cache: Cache) -> tuple[Tensor, Tensor, Tensor]:
        """Run new positions (B, T) over `cache`; return (output, new keys, new values)."""
        # position-dependent tables, built once and shared by every layer
        bias = window_bias(position_ids, cache.positions, self.window)
        rotary = rotary_tables(position_ids, self.head_dim, self.rope_base)
        keys, values = [], []
        for layer, past_key, past_value in zip(self.layers, cache.keys, cache.values,
                                               strict=True):
            x, key, value = layer(x, rotary, bias, past_key, past_value)
            keys.append(key)
            values.append(value)
        return self.norm(x), torch.stack(keys), torch.stack(values)


class ELRModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config

        # local encoder
        self.byte_embed = nn.Embedding(c.vocab_size, c.d_local)
        self.ngram_embeds = nn.ModuleList(
            nn.Embedding(c.ngram_buckets, c.d_local) for _ in c.ngram_sizes)
        self.encoder = Stack(c.n_encoder_layers, c.d_local, c.n_local_heads, c.local_window, c)

        # patch pooling and global model
        self.patch_proj = nn.Linear(2 * c.d_local, c.d_global, bias=False)
        self.global_model = Stack(c.n_global_layers, c.d_global, c.n_global_heads,
                                  c.global_window, c)

        # local decoder
        self.context_proj = nn.Linear(c.d_global, c.d_local, bias=False)
        self.decoder = Stack(c.n_decoder_layers, c.d_local, c.n_local_heads, c.local_window, c)
        self.head = nn.Linear(c.d_local, c.vocab_size, bias=False)

        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the four parts the runtime calls ---------------------------------------------------

    def encoder_step(self, byte_ids: Tensor, prev_byte_ids: Tensor, position_ids: Tensor,
                     cache: Cache) -> tuple[Tensor, Tensor, Tensor]:
        """Encode new bytes. byte_ids (B, T); prev_byte_ids (B, ngram_history)."""
        c = self.config
        history = c.ngram_history
        ids = torch.cat((prev_byte_ids, byte_ids), dim=1)  # (B, history + T)
        x = self.byte_embed(byte_ids)  # (B, T, d_local)
        hashed = ngram_hash_ids(ids, c.ngram_sizes, history, c.ngram_buckets)  # (B, T, S)
        for i, table in enumerate(self.ngram_embeds):
            x = x + table(hashed[:, :, i])
        return self.encoder(x, position_ids, cache)

    def pool_patch(self, patch_hidden: Tensor) -> Tensor:
        """Pool one patch of encoder states (B, L, d_local) into a global input (B, 1, d_global)."""
        pooled = torch.cat((patch_hidden.mean(dim=1), patch_hidden[:, -1]), dim=-1)
        return self.patch_proj(pooled)[:, None]

    def global_step(self, patch_hidden: Tensor, position_ids: Tensor,
                    cache: Cache) -> tuple[Tensor, Tensor, Tensor]:
        """Advance the global model by one finished patch. position_ids (B, 1)."""
        return self.global_model(self.pool_patch(patch_hidden), position_ids, cache)

    def latent_loop(self, latent_input: Tensor, position_ids: Tensor, cache: Cache,
                    n_latent_steps: int) -> tuple[Tensor, Tensor, Tensor]:
        """Feed the last global hidden state back as the next global input, n_latent_steps times.

        latent_input (B, 1, d_global); position_ids (B, 1) is the position of the first step.
        Returns the last hidden state and the keys and values of all n_latent_steps steps.
        """
        hidden = latent_input
        keys, values = [], []
        for step in range(n_latent_steps):
            positions = position_ids + step
            hidden, new_keys, new_values = self.global_model(hidden, positions, cache)
            cache = cache.append(positions, new_keys, new_values)
            keys.append(new_keys)
            values.append(new_values)
        return hidden, torch.cat(keys, dim=3), torch.cat(values, dim=3)

    def decoder_step(self, encoder_hidden: Tensor, global_context: Tensor, position_ids: Tensor,
                     cache: Cache) -> tuple[Tensor, Tensor, Tensor]:
        """Predict the byte after each new position. Returns logits (B, T, vocab_size)."""
        x = encoder_hidden + self.context_proj(global_context)
        x, keys, values = self.decoder(x, position_ids, cache)
        return self.head(x), keys, values

    # -- full-sequence forward for training --------------------------------------------------

    def forward(self, byte_ids: Tensor, patch_ids: Tensor) -> Tensor:
        """Return next-byte logits (B, T, vocab_size) for a batch of whole sequences.

        byte_ids: (B, T) int64, each row starting with BOS_ID.
        patch_ids: (B, T + 1) int64, the patch index of every position and of the position
            after the last one, because the prediction at the last byte depends on whether the
            next byte opens a patch.
            Non-decreasing, 0 only for BOS, consecutive patches differ by 1.
        """
        batch, length = byte_ids.shape
        device = byte_ids.device
        positions = torch.arange(length, device=device).expand(batch, length)

        # encode every byte, with PAD as the n-gram history before BOS
        history = torch.full((batch, self.config.ngram_history), PAD_ID, dtype=torch.long,
                             device=device)
        hidden, _, _ = self.encoder_step(byte_ids, history, positions,
                                         self.encoder.empty_cache(batch, device))

        # pool each patch into one global input: [mean, last] of its encoder states
        global_inputs = self._pool_patches(hidden, patch_ids[:, :length])  # (B, N, d_global)

        # global model over patches
        n_patches = global_inputs.shape[1]
        global_positions = torch.arange(n_patches, device=device).expand(batch, n_patches)
        global_hidden, _, _ = self.global_model(global_inputs, global_positions,
                                                self.global_model.empty_cache(batch, device))

        # decoder: position t reads the last patch finished before byte t + 1
        context_ids = (patch_ids[:, 1:] - 1).clamp(min=0)  # (B, T)
        context = torch.gather(
            global_hidden, 1,
            context_ids[:, :, None].expand(batch, length, global_hidden.shape[-1]))
        logits, _, _ = self.decoder_step(hidden, context, positions,
                                         self.decoder.empty_cache(batch, device))
        return logits

    def _pool_patches(self, hidden: Tensor, patch_ids: Tensor) -> Tensor:
        batch, length, width = hidden.shape
        n_patches = int(patch_ids.max().item()) + 1
        index = patch_ids[:, :, None].expand(batch, length, width)
        sums = hidden.new_zeros(batch, n_patches, width).scatter_add_(1, index, hidden)
        counts = hidden.new_zeros(batch, n_patches).scatter_add_(
            1, patch_ids, hidden.new_ones(batch, length))
        means = sums / counts.clamp(min=1.0)[:, :, None]
        positions = torch.arange(length, device=hidden.device).expand(batch, length)
        last_index = torch.zeros(batch, n_patches, dtype=torch.long, device=hidden.device)
        last_index = last_index.scatter_reduce(1, patch_ids, positions, reduce="amax")
        last = torch.gather(hidden, 1, last_index[:, :, None].expand(batch, n_patches, width))
        return self.patch_proj(torch.cat((means, last), dim=-1))


def estimate_flops_per_byte(config: ModelConfig, mean_patch_length: float) -> float:
    """Estimate forward FLOPs per byte: 2 per weight multiply plus attention over the window.

    The local stacks run once per byte and the global stack once per patch; attention costs
    4 * width * attended positions per layer, counted with the full window as an upper bound.
    """
    c = config

    def stack_flops(n_layers: int, width: int, window: int) -> float:
        weights = n_layers * (4 + 2 * c.mlp_ratio) * width * width
        return 2.0 * weights + 4.0 * n_layers * width * window

    per_byte = stack_flops(c.n_encoder_layers, c.d_local, c.local_window)
    per_byte += stack_flops(c.n_decoder_layers, c.d_local, c.local_window)
    per_byte += 2.0 * (c.d_global * c.d_local + c.d_local * c.vocab_size)  # context + head
    per_patch = stack_flops(c.n_global_layers, c.d_global, c.global_window)
    per_patch += 2.0 * 2 * c.d_local * c.d_global  # pooling projection
    return per_byte + per_patch / mean_patch_length
