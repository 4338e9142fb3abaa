"""The frame and sensor encoders every family shares, so comparisons between families are fair.

`TickEncoder` turns one tick's inputs into a feature vector of size `hidden`: each image stream goes
through a small CNN (`FrameEncoder`), each vector/scalar stream is normalized with training-split
statistics and joined with its age and validity, packed high-rate streams are encoded per slot and
averaged over the real slots; a two-layer MLP fuses the lot. It accepts any leading axes, so the same
module serves windows (B, T, ...) and streaming ticks (B, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from seqsense.dataset import StreamInfo


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


class TickEncoder(nn.Module):
    """Encodes one tick's input streams (any leading axes) into a (..., hidden) feature vector."""

    def __init__(self, inputs, streams: dict[str, StreamInfo], normalization: dict, packed: dict, hidden: int, frame_channels: int):
        super().__init__()
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
                self.frames[key] = FrameEncoder(tuple(info.shape), frame_channels, hidden)
                width += hidden + 2  # features, valid, age
                continue
            d = max(1, int(torch.tensor(info.shape).prod().item()) if info.shape else 1)
            stats = normalization.get(s, {"mean": [0.0] * d, "std": [1.0] * d})
            self.register_buffer(f"{key}_mean", torch.tensor(stats["mean"], dtype=torch.float32))
            self.register_buffer(f"{key}_std", torch.tensor(stats["std"], dtype=torch.float32))
            if s in self.packed:
                self.slots[key] = nn.Sequential(nn.Linear(d + 1, hidden), nn.GELU(), nn.Linear(hidden, hidden))
                width += hidden + 1  # mean slot feature + fraction of real slots
            else:
                width += d + 2  # value, age, valid
        self.fuse = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
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
