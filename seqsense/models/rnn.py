"""`rnn`: a GRU or LSTM over TickEncoder features; its hidden state is the streaming state.

Each tick's features are joined with the time since the previous tick (`dt_s`, clamped), so the cell
can tell a dropped frame from a regular one. The offline `forward` runs the cell over the window
from a zero state, which is exactly what a loop of `step` from `init_state` computes. Its memoryless
twin (`memoryless=True`, built in `seqsense.models.base`) resets the state at every tick.

Stateful training (`stateful=true`): `forward_stateful` runs the cell over a window from a carried
(h, c) instead of zeros and returns the state after the window, so consecutive windows of an episode
chain into one long sequence (truncated BPTT over `tbptt_window` ticks). High-rate inputs can be
packed (`packed={"imu": K}` on a slower `rate_hz` clock): the shared TickEncoder encodes every sample
since the previous tick and pools them, so the cell steps at the clock, not at the sensor rate.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from seqsense.errors import ConfigError
from seqsense.models.base import ModelConfig, SequenceModel, register_model
from seqsense.models.encoders import PredictionHead, TickEncoder, dt_feature


@dataclasses.dataclass
class RNNConfig(ModelConfig):
    """RNN hyper-parameters: cell type (gru | lstm) and depth; `window` is the BPTT length."""

    cell: str = "gru"
    layers: int = 1

    def __post_init__(self):
        super().__post_init__()
        self.cell = str(self.cell).lower()
        if self.cell not in ("gru", "lstm"):
            raise ConfigError(f"RNNConfig: cell must be 'gru' or 'lstm', got {self.cell!r}.")
        if self.layers < 1:
            raise ConfigError(f"RNNConfig: layers must be >= 1, got {self.layers}.")


@register_model("rnn", RNNConfig)
class RNNModel(SequenceModel):
    """Owns the shared TickEncoder, a GRU/LSTM core and the head; state = h (and c for LSTM)."""

    supports_stateful = True
    state_batch_dims = {"h": 1, "c": 1}  # (layers, B, H)

    def __init__(self, config: RNNConfig, streams, normalization):
        super().__init__(config, streams, normalization)
        h = config.hidden
        self.encoder = TickEncoder(config.inputs, streams, normalization, config.packed, h, config.frame_channels)
        core = nn.GRU if config.cell == "gru" else nn.LSTM
        self.core = core(h + 1, h, num_layers=config.layers, batch_first=True)
        self.head = PredictionHead(h, self.target_dim, self.discrete)

    def _features(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.encoder(x), dt_feature(x)], -1)  # (..., H + 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Predictions for every tick of windows (B, T, ...), starting from a zero state."""
        y, _ = self.core(self._features(batch))  # (B, T, H)
        return self.denormalize(self.head(y))

    def forward_stateful(self, batch: dict[str, torch.Tensor], state: dict[str, torch.Tensor] | None = None):
        """Windows (B, T, ...) continuing from `state` (None: zeros) -> (out, state after the last tick)."""
        state = self.init_state(batch["dt_s"].shape[0]) if state is None else state
        y, nxt = self._run_core(self._features(batch), state)  # (B, T, H)
        return self.denormalize(self.head(y)), nxt

    def _run_core(self, x: torch.Tensor, state: dict[str, torch.Tensor]):
        """The recurrence over features (B, T, H + 1) from `state` -> (outputs (B, T, H), state after the last tick)."""
        if self.config.cell == "lstm":
            y, (h, c) = self.core(x, (state["h"], state["c"]))
            return y, {"h": h, "c": c}
        y, h = self.core(x, state["h"])
        return y, {"h": h}

    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """Zero hidden state: h (layers, B, H), plus c for an LSTM."""
        cfg = self.config
        z = torch.zeros(cfg.layers, batch_size, cfg.hidden, device=self.device)
        return {"h": z, "c": z.clone()} if cfg.cell == "lstm" else {"h": z}

    def step(self, tick: dict[str, torch.Tensor], state: dict[str, torch.Tensor]):
        """One tick (B, ...) -> (out (B, D), next state)."""
        y, nxt = self._run_core(self._features(tick).unsqueeze(1), state)  # (B, 1, H)
        return self.denormalize(self.head(y[:, 0])), nxt
