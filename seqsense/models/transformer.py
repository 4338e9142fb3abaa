"""`transformer`: causal temporal attention over a sliding window of the last W ticks, with ALiBi.

Shape letters: B batch, T ticks, L layers, N heads, W context (ticks attended), E = hidden / N.

Tick i attends to ticks j with 0 <= i - j < W, scored q·k/sqrt(E) - m_n (i - j): ALiBi's linear
relative-position bias with per-head slopes m_n = 2^(-8 n / N) (Press et al. 2022). The bias depends
only on the distance i - j, so it survives the window sliding: the streaming form keeps each layer's
keys and values of the last W ticks in a cache kv (L, B, 2, N, W, E), shifted by one slot per tick (slot s holds the tick
W - 1 - s ticks ago), plus the count of ticks seen so far to mask empty slots. The offline forward
uses the same sliding-window mask, so a loop of `step` reproduces it exactly. Its memoryless twin
(`memoryless=True`, built in `seqsense.models.base`) is context 1: each tick attends only to itself.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from seqsense.errors import ConfigError
from seqsense.models.base import ModelConfig, SequenceModel, register_model
from seqsense.models.encoders import PredictionHead, TickEncoder, dt_feature

QUERY_BLOCK = 128  # offline attention runs over query blocks so memory is O(T W), not O(T^2)


@dataclasses.dataclass
class TransformerConfig(ModelConfig):
    """Transformer hyper-parameters; `context` is W, the ticks a step attends to (0: use `window`)."""

    layers: int = 2
    heads: int = 4  # each head has its own ALiBi decay rate: more heads, a richer set of temporal kernels
    context: int = 0
    mlp_ratio: int = 2
    spatial_attention: bool = False  # frames: patch self-attention per frame (factorized, as ViViT) instead of the CNN
    patch: int = 8  # patch side in pixels for spatial attention

    def __post_init__(self):
        super().__post_init__()
        for name in ("layers", "heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TransformerConfig: {name} must be >= 1, got {getattr(self, name)}.")
        if self.patch < 1:
            raise ConfigError(f"TransformerConfig: patch must be >= 1 pixel, got {self.patch}.")
        if self.context < 0:
            raise ConfigError(f"TransformerConfig: context must be >= 0 (0 = window), got {self.context}.")
        if self.hidden % self.heads:
            raise ConfigError(f"TransformerConfig: hidden={self.hidden} must be divisible by heads={self.heads}.")

    @property
    def context_ticks(self) -> int:
        """W: ticks each step attends to, itself included."""
        return self.context or self.window


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi slopes m_n = 2^(-8 n / N), n = 1..N: (N,)."""
    return torch.tensor([2.0 ** (-8.0 * (n + 1) / heads) for n in range(heads)])


class SlidingAttention(nn.Module):
    """Multi-head causal self-attention limited to the last W ticks, with ALiBi bias."""

    def __init__(self, dim: int, heads: int, context: int):
        super().__init__()
        self.heads, self.head_dim, self.context = heads, dim // heads, context
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        slopes = alibi_slopes(heads)
        self.register_buffer("slopes", slopes, persistent=False)
        dist = torch.arange(context - 1, -1, -1, dtype=torch.float32)  # slot s is W-1-s ticks back
        self.register_buffer("slot_bias", (-slopes[:, None] * dist[None, :]).unsqueeze(1), persistent=False)  # (N, 1, W)
        self.register_buffer("slot", torch.arange(context), persistent=False)  # (W,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D), tick i seeing ticks i-W+1..i."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, N, T, E) each
        outs = []
        for a in range(0, t, QUERY_BLOCK):
            e = min(a + QUERY_BLOCK, t)
            lo = max(0, a - self.context + 1)
            dist = torch.arange(a, e, device=x.device)[:, None] - torch.arange(lo, e, device=x.device)[None, :]
            bias = -self.slopes[:, None, None] * dist  # (N, Tq, Tk)
            bias = bias.masked_fill((dist < 0) | (dist >= self.context), float("-inf"))
            outs.append(F.scaled_dot_product_attention(q[:, :, a:e], k[:, :, lo:e], v[:, :, lo:e], attn_mask=bias))  # (B, N, Tq, E)
        y = torch.cat(outs, 2).transpose(1, 2).reshape(b, t, d)
        return self.out(y)

    def step_bias(self, filled: torch.Tensor) -> torch.Tensor:
        """ALiBi bias (B, N, 1, W) of one tick over the cache slots, -inf on the slots not yet filled."""
        full = self.slot >= (self.context - filled).view(-1, 1, 1, 1)  # (B, 1, 1, W) slots holding a tick
        return torch.where(full, self.slot_bias, float("-inf"))

    def step(self, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor):
        """One tick x (B, D) with cache kv (B, 2, N, W, E) and the bias of `step_bias`.

        Attention is written out (scores, softmax, weighted values) rather than through
        scaled_dot_product_attention, whose dispatch costs more than the maths for one query.
        """
        b, d = x.shape
        qkv = self.qkv(x).view(b, 3, self.heads, 1, self.head_dim)  # (B, 3, N, 1, E)
        kv = torch.cat([kv[:, :, :, 1:], qkv[:, 1:]], 3)  # (B, 2, N, W, E): drop the oldest, newest last
        scores = (qkv[:, 0] * self.head_dim**-0.5) @ kv[:, 0].transpose(-1, -2) + bias  # (B, N, 1, W)
        y = torch.softmax(scores, -1) @ kv[:, 1]  # (B, N, 1, E)
        return self.out(y.reshape(b, d)), kv


class Block(nn.Module):
    """Pre-norm transformer block: sliding attention then an MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, context: int, mlp_ratio: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SlidingAttention(dim, heads, context)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def step(self, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor):
        """One tick (B, D) through the block, updating this layer's cache (B, 2, N, W, E)."""
        a, kv = self.attn.step(self.ln1(x), kv, bias)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv


@register_model("transformer", TransformerConfig)
class TransformerModel(SequenceModel):
    """Owns the shared TickEncoder, L sliding-attention blocks and the head; state = k/v caches + count."""

    def __init__(self, config: TransformerConfig, streams, normalization):
        super().__init__(config, streams, normalization)
        h = config.hidden
        frames = "attention" if config.spatial_attention else "cnn"
        self.encoder = TickEncoder(config.inputs, streams, normalization, config.packed, h, config.frame_channels, frames, config.patch)
        self.proj = nn.Linear(h + 1, h)
        w = config.context_ticks
        self.blocks = nn.ModuleList(Block(h, config.heads, w, config.mlp_ratio) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(h)
        self.head = PredictionHead(h, self.target_dim, self.discrete)

    def _features(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.proj(torch.cat([self.encoder(x), dt_feature(x)], -1))  # (..., H)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Predictions for every tick of windows (B, T, ...), each attending to its last W ticks."""
        x = self._features(batch)  # (B, T, H)
        for blk in self.blocks:
            x = blk(x)
        return self.denormalize(self.head(self.ln_f(x)))

    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """Empty key/value cache kv (L, B, 2, N, W, E) and the count of filled slots (B,), int64."""
        cfg = self.config
        shape = (cfg.layers, batch_size, 2, cfg.heads, cfg.context_ticks, cfg.hidden // cfg.heads)
        return {"kv": torch.zeros(shape, device=self.device), "count": torch.zeros(batch_size, dtype=torch.int64, device=self.device)}

    def step(self, tick: dict[str, torch.Tensor], state: dict[str, torch.Tensor]):
        """One tick (B, ...) -> (out (B, D), next state)."""
        x = self._features(tick)  # (B, H)
        count = (state["count"] + 1).clamp(max=self.config.context_ticks)  # slots in use after this tick
        bias = self.blocks[0].attn.step_bias(count)  # every layer has the same slopes and slots
        kvs = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk.step(x, state["kv"][i], bias)
            kvs.append(kv)
        out = self.denormalize(self.head(self.ln_f(x)))
        return out, {"kv": torch.stack(kvs), "count": count}
