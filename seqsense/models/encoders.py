"""The frame and sensor encoders every family shares, so comparisons between families are fair.

`TickEncoder` turns one tick's inputs into a feature vector of size `hidden`: each image stream goes
through a small CNN (`FrameEncoder`), each vector/scalar stream is normalized with training-split
statistics and joined with its age and validity, packed high-rate streams are encoded per slot and
averaged over the real slots; a two-layer MLP fuses the lot. The transformer family can swap the CNN
for spatial self-attention over patches (`SpatialAttentionEncoder`). It accepts any leading axes, so the same
module serves windows (B, T, ...) and streaming ticks (B, ...). `dt_feature` is the time since the
previous tick that the temporal families join to these features.
"""

from __future__ import annotations

import torch
from torch import nn

from seqsense.dataset import StreamInfo

MAX_DT_S = 10.0  # dt feature clamp: longer gaps between ticks all look alike to the temporal core


def dt_feature(tick: dict[str, torch.Tensor]) -> torch.Tensor:
    """The time since the previous tick as a feature, clamped to [0, MAX_DT_S]: (...,) -> (..., 1)."""
    return tick["dt_s"].float().clamp(0.0, MAX_DT_S).unsqueeze(-1)


class FrameEncoder(nn.Module):
    """3-layer strided CNN: uint8 (N, H, W, C) -> (N, out_dim), keeping spatial layout via flatten."""

    def __init__(self, shape: tuple[int, int, int], channels: int, out_dim: int):
        super().__init__()
        h, w, c = shape
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        hh, ww = h, w
        for _ in range(3):
            hh, ww = (hh + 1) // 2, (ww + 1) // 2
        self.proj = nn.Linear(2 * channels * hh * ww, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float() * (1.0 / 255.0) - 0.5  # (N, C, H, W) in [-0.5, 0.5]
        return self.proj(self.net(x).flatten(1))


class SpatialAttentionEncoder(nn.Module):
    """Self-attention across the patches of one frame: uint8 (N, H, W, C) -> (N, out_dim).

    The spatial half of a factorized video transformer (ViViT): the frame is zero-padded to a multiple
    of P and cut into P×P patches, each linearly embedded plus a learned position embedding;
    `layers` pre-norm blocks (multi-head self-attention over the patches, then an MLP, both residual)
    relate the parts of the frame, and the mean patch token is projected to out_dim. Attention over
    time, across these frame tokens, is the transformer family's job.
    """

    def __init__(self, shape: tuple[int, int, int], out_dim: int, patch: int = 8, heads: int = 2, layers: int = 1):
        super().__init__()
        h, w, c = shape
        self.patch, self.heads = patch, heads
        self.grid = ((h + patch - 1) // patch, (w + patch - 1) // patch)
        d = out_dim
        self.embed = nn.Linear(patch * patch * c, d)
        self.pos = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], d) * 0.02)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(d),
                    "qkv": nn.Linear(d, 3 * d),
                    "out": nn.Linear(d, d),
                    "ln2": nn.LayerNorm(d),
                    "mlp": nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(approximate="tanh"), nn.Linear(2 * d, d)),
                }
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        p, (gh, gw) = self.patch, self.grid
        x = x.float() * (1.0 / 255.0) - 0.5
        x = nn.functional.pad(x, (0, 0, 0, gw * p - w, 0, gh * p - h))  # (N, gh·P, gw·P, C)
        tok = x.reshape(n, gh, p, gw, p, c).permute(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, p * p * c)
        tok = self.embed(tok) + self.pos  # (N, S, D), S patches
        heads, dh = self.heads, tok.shape[-1] // self.heads
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](tok)).reshape(n, -1, 3, heads, dh).permute(2, 0, 3, 1, 4)  # (N, heads, S, dh) each
            att = torch.softmax(q @ k.transpose(-1, -2) * dh**-0.5, dim=-1)
            tok = tok + blk["out"]((att @ v).transpose(1, 2).reshape(n, -1, heads * dh))
            tok = tok + blk["mlp"](blk["ln2"](tok))
        return self.norm(tok).mean(1)


class TickEncoder(nn.Module):
    """Encodes one tick's input streams (any leading axes) into a (..., hidden) feature vector."""

    def __init__(
        self,
        inputs,
        streams: dict[str, StreamInfo],
        normalization: dict,
        packed: dict,
        hidden: int,
        frame_channels: int,
        frame_encoder: str = "cnn",
        patch: int = 8,
    ):
        super().__init__()
        if frame_encoder not in ("cnn", "attention"):
            raise ValueError(f"frame_encoder must be 'cnn' or 'attention', got {frame_encoder!r}.")
        self.inputs = list(inputs)
        self.packed = dict(packed)
        self.kinds = {s: streams[s].kind for s in self.inputs}
        self.frames = nn.ModuleDict()
        self.slots = nn.ModuleDict()
        width = 0
        for i, s in enumerate(self.inputs):
            info = streams[s]
            key = f"s{i}"
            if info.kind == "image":
                if frame_encoder == "attention":
                    self.frames[key] = SpatialAttentionEncoder(tuple(info.shape), hidden, patch=patch)
                else:
                    self.frames[key] = FrameEncoder(tuple(info.shape), frame_channels, hidden)
                width += hidden + 2  # features, valid, age
                continue
            d = max(1, int(torch.tensor(info.shape).prod().item()) if info.shape else 1)
            stats = normalization.get(s, {"mean": [0.0] * d, "std": [1.0] * d})
            self.register_buffer(f"{key}_mean", torch.tensor(stats["mean"], dtype=torch.float32))
            self.register_buffer(f"{key}_std", torch.tensor(stats["std"], dtype=torch.float32))
            if s in self.packed:
                self.slots[key] = nn.Sequential(nn.Linear(d + 1, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden))
                width += hidden + 1  # mean slot feature + fraction of real slots
            else:
                width += d + 2  # value, age, valid
        self.fuse = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden))
        self.out_dim = hidden

    def forward(self, tick: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        lead = None
        for i, s in enumerate(self.inputs):
            key = f"s{i}"
            x = tick[s]
            if self.kinds[s] == "image":
                lead = x.shape[:-3]
                valid = tick[f"{s}_valid"].float().unsqueeze(-1)
                feat = self.frames[key](x.reshape((-1,) + x.shape[-3:])).reshape(lead + (-1,))
                parts += [feat * valid, valid, tick[f"{s}_age_s"].unsqueeze(-1)]
            elif s in self.packed:
                mean, std = getattr(self, f"{key}_mean"), getattr(self, f"{key}_std")
                mask = tick[f"{s}_mask"].float().unsqueeze(-1)  # (..., K, 1)
                xv = (x.reshape(x.shape[: mask.dim() - 1] + (-1,)) - mean) / std
                h = self.slots[key](torch.cat([xv, tick[f"{s}_age_s"].unsqueeze(-1)], -1)) * mask
                count = mask.sum(-2)
                parts += [h.sum(-2) / count.clamp(min=1.0), count / mask.shape[-2]]
                lead = mask.shape[:-2]
            else:
                mean, std = getattr(self, f"{key}_mean"), getattr(self, f"{key}_std")
                valid = tick[f"{s}_valid"].float().unsqueeze(-1)
                lead = valid.shape[:-1]
                xv = (x.reshape(lead + (-1,)) - mean) / std * valid
                parts += [xv, tick[f"{s}_age_s"].unsqueeze(-1).clamp(max=10.0), valid]
        return self.fuse(torch.cat(parts, -1))


class PredictionHead(nn.Module):
    """Maps core features (..., hidden) to outputs in normalized target units.

    Continuous targets: {"mean": (..., D), "var": (..., D)} with var = softplus(raw) + min_var > 0;
    label targets: {"logits": (..., K)}. `SequenceModel.denormalize` converts to target units.
    """

    def __init__(self, hidden: int, target_dim: int, discrete: bool, min_var: float = 1e-4):
        super().__init__()
        self.discrete = discrete
        self.target_dim = target_dim
        self.min_var = min_var
        self.proj = nn.Linear(hidden, target_dim if discrete else 2 * target_dim)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.proj(h)
        if self.discrete:
            return {"logits": z}
        mean, raw = z.split(self.target_dim, dim=-1)
        return {"mean": mean, "var": nn.functional.softplus(raw) + self.min_var}
