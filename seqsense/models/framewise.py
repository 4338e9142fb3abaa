"""`framewise`: no memory; each tick's inputs alone map to that tick's target.

This is the "each frame stands alone" hypothesis: TickEncoder features -> MLP -> head, applied to
every tick independently, so offline `forward` and streaming `step` are the same computation.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from seqsense.errors import ConfigError
from seqsense.models.base import ModelConfig, SequenceModel, register_model
from seqsense.models.encoders import PredictionHead, TickEncoder


@dataclasses.dataclass
class FramewiseConfig(ModelConfig):
    """Framewise hyper-parameters: MLP depth after the shared encoder. The window only batches ticks."""

    window: int = 16
    mlp_layers: int = 1  # hidden layers between the encoder and the head

    def __post_init__(self):
        super().__post_init__()
        if self.mlp_layers < 0:
            raise ConfigError(f"FramewiseConfig: mlp_layers must be >= 0, got {self.mlp_layers}.")


@register_model("framewise", FramewiseConfig)
class FramewiseModel(SequenceModel):
    """Owns the shared TickEncoder, a per-tick MLP and the prediction head; no state."""

    memoryless = True

    def __init__(self, config: FramewiseConfig, streams, normalization):
        super().__init__(config, streams, normalization)
        h = config.hidden
        self.encoder = TickEncoder(config.inputs, streams, normalization, config.packed, h, config.frame_channels)
        layers = []
        for _ in range(config.mlp_layers):
            layers += [nn.Linear(h, h), nn.GELU(approximate="tanh")]
        self.mlp = nn.Sequential(*layers)
        self.head = PredictionHead(h, self.target_dim, self.discrete)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Predictions for every tick of windows (B, T, ...), each tick on its own."""
        return self.denormalize(self.head(self.mlp(self.encoder(batch))))  # (B, T, D)

    def step(self, tick: dict[str, torch.Tensor], state: dict[str, torch.Tensor]):
        """One tick (B, ...) -> (out (B, D), unchanged empty state)."""
        return self.forward(tick), state
