"""The contract every model family follows, its shared config, and the model registry.

A family is one file: an `XConfig` dataclass (subclass of `ModelConfig`, validating itself in
`__post_init__`) and an `XModel` (subclass of `SequenceModel`) registered with
`@register_model("x", XConfig)`, plus one import line in `seqsense/models/__init__.py`.

A `SequenceModel` has two faces that must agree to 1e-5:
- offline: `forward(batch)` over windows (B, T, ...) -> {"mean": (B, T, D), "var": (B, T, D)} for
  continuous targets, or {"logits": (B, T, K)} for labels;
- streaming: `init_state(B)` then `step(tick, state) -> (out, next_state)` with tick tensors
  (B, ...) and out {"mean": (B, D), "var": (B, D)} or {"logits": (B, K)}. State is a dict of tensors,
  explicit so that export can make it an ONNX input/output.
`predictor()` wraps `step` into a numpy `StreamingPredictor` (reset/step) for robot loops.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from seqsense.dataset import StreamInfo, WindowSpec
from seqsense.errors import ConfigError
from seqsense.predictor import Prediction

MODELS: dict[str, tuple[type, type]] = {}  # name -> (ModelClass, ConfigClass)


def register_model(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator adding a SequenceModel subclass to the registry under `name`."""

    def deco(cls: type) -> type:
        cls.family = name
        cls.config_cls = config_cls
        MODELS[name] = (cls, config_cls)
        return cls

    return deco


def get_model_class(name: str) -> tuple[type, type]:
    """(ModelClass, ConfigClass) registered as `name`; the error lists valid names."""
    import seqsense.models  # noqa: F401  (registers the families)

    if name not in MODELS:
        raise ConfigError(f"Unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}.")
    return MODELS[name]


@dataclasses.dataclass
class ModelConfig:
    """Fields every family shares: data (streams, clock, window) and the training budget."""

    inputs: tuple[str, ...] = ()
    target: str = ""
    window: int = 32  # T: ticks of context per training window
    stride: int = 0  # ticks between training window starts; 0 = window (no overlap)
    packed: dict = dataclasses.field(default_factory=dict)  # input stream -> K samples per tick
    clock: str | None = None
    rate_hz: float | None = None
    max_age_s: float = math.inf
    hidden: int = 64  # width of the shared encoders' output and of the temporal core
    frame_channels: int = 16  # channels of the first CNN layer (doubled per layer)
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    steps: int = 300  # training budget in optimizer steps
    time_budget_s: float = 0.0  # if > 0, stop training after this many seconds as well
    val_fraction: float = 0.2
    val_every: int = 100
    seed: int = 0
    num_classes: int = 0  # classes of a label target; 0 = infer from the training split
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping

    def __post_init__(self):
        self.inputs = tuple(self.inputs)
        for name in ("window", "hidden", "batch_size", "frame_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{type(self).__name__}: {name} must be >= 1, got {getattr(self, name)}.")
        if self.stride < 0:
            raise ConfigError(f"{type(self).__name__}: stride must be >= 0 (0 = window), got {self.stride}.")
        if self.steps < 0 or self.time_budget_s < 0:
            raise ConfigError(f"{type(self).__name__}: steps and time_budget_s must be >= 0.")
        if not (self.lr > 0):
            raise ConfigError(f"{type(self).__name__}: lr must be > 0, got {self.lr}.")
        if self.val_every < 1 or self.num_classes < 0 or self.grad_clip < 0:
            raise ConfigError(
                f"{type(self).__name__}: need val_every >= 1, num_classes >= 0, grad_clip >= 0; "
                f"got val_every={self.val_every}, num_classes={self.num_classes}, grad_clip={self.grad_clip}."
            )

    def window_spec(self, window: int | None = None) -> WindowSpec:
        """The dataset windows this model trains on (or `window` ticks for evaluation)."""
        return WindowSpec(
            inputs=self.inputs,
            target=self.target,
            window=window or self.window,
            stride=self.stride if window is None else 0,
            clock=self.clock,
            rate_hz=self.rate_hz,
            packed=dict(self.packed),
            max_age_s=self.max_age_s,
        )


def to_tensors(tick: dict[str, np.ndarray], batch: bool = True, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """numpy tick/window dict -> torch tensors, adding a batch axis of 1 if `batch`."""
    out = {}
    for k, v in tick.items():
        t = torch.as_tensor(np.asarray(v), device=device)
        out[k] = t.unsqueeze(0) if batch else t
    return out


class SequenceModel(nn.Module):
    """Base of every family: owns the config, the stream info, and the normalization statistics."""

    family = "base"
    config_cls = ModelConfig
    memoryless = False  # True for families whose prediction at a tick uses only that tick
    input_kinds: tuple[str, ...] = ("image", "vector", "scalar")  # stream kinds the family can read
    target_kinds: tuple[str, ...] = ("vector", "scalar", "label", "event")  # and can predict

    @classmethod
    def check_streams(cls, config: ModelConfig, streams: dict[str, StreamInfo]) -> None:
        """ConfigError if an input or the target is of a kind this family cannot handle."""
        for s in config.inputs:
            if streams[s].kind not in cls.input_kinds:
                raise ConfigError(
                    f"Model {cls.family!r} cannot read {streams[s].kind} stream {s!r}; "
                    f"input kinds it accepts: {', '.join(cls.input_kinds)}."
                )
        kind = streams[config.target].kind
        if kind not in cls.target_kinds:
            raise ConfigError(
                f"Model {cls.family!r} cannot predict {kind} stream {config.target!r}; "
                f"target kinds it accepts: {', '.join(cls.target_kinds)}."
            )

    def __init__(self, config: ModelConfig, streams: dict[str, StreamInfo], normalization: dict):
        super().__init__()
        self.config = config
        self.streams = streams
        self.normalization = normalization
        target = streams[config.target]
        self.discrete = target.kind in ("label", "event")
        self.num_classes = int(getattr(config, "num_classes", 0) or 0)
        if self.discrete and self.num_classes < 2:
            raise ConfigError(
                f"{type(config).__name__}: label target {config.target!r} needs num_classes >= 2, got {self.num_classes} "
                "(train() infers it from the training split)."
            )
        self.target_dim = self.num_classes if self.discrete else int(np.prod(target.shape) or 1)
        stats = normalization.get("target")
        mean = torch.tensor(stats["mean"] if stats else [0.0] * self.target_dim, dtype=torch.float32)
        std = torch.tensor(stats["std"] if stats else [1.0] * self.target_dim, dtype=torch.float32)
        self.register_buffer("target_mean", mean, persistent=True)
        self.register_buffer("target_std", std, persistent=True)

    def denormalize(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Head outputs in normalized target units -> mean and variance in the target's units."""
        if "logits" in out:
            return out
        return {"mean": out["mean"] * self.target_std + self.target_mean, "var": out["var"] * self.target_std**2}

    @property
    def device(self) -> torch.device:
        """The device of the model's tensors."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    # ---- offline face -------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Predictions for every tick of windows (B, T, ...)."""
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training loss over the valid ticks of a batch (Gaussian NLL in normalized units, or CE)."""
        out = self(batch)
        valid = batch["target_valid"] & ~batch["tick_is_pad"]
        if self.discrete:
            logits = out["logits"][valid]
            return nn.functional.cross_entropy(logits, batch["target"][valid].long())
        y = (batch["target"] - self.target_mean) / self.target_std
        mu = (out["mean"] - self.target_mean) / self.target_std
        var = out["var"] / self.target_std**2
        nll = 0.5 * (torch.log(var) + (y - mu) ** 2 / var)
        return nll[valid].mean()

    def fit_extra(self, train_dataset, log=print) -> None:
        """Closed-form or marginal-likelihood fitting a family does besides (or instead of) SGD."""

    @property
    def trains_by_sgd(self) -> bool:
        """Whether the shared training loop should run optimizer steps on `loss`."""
        return any(p.requires_grad for p in self.parameters())

    # ---- streaming face -----------------------------------------------------------------------
    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """The state at reset (an empty dict for memoryless families)."""
        return {}

    def step(self, tick: dict[str, torch.Tensor], state: dict[str, torch.Tensor]):
        """One tick (B, ...) -> (out with (B, D) tensors, next state)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, sequence: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Offline predictions over one whole sequence (no batch axis) as numpy (T, D)."""
        self.eval()
        out = self(to_tensors(sequence, device=self.device))
        return {k: v[0].cpu().numpy() for k, v in out.items()}

    def predictor(self, compile: bool = False) -> "TorchPredictor":
        """A numpy StreamingPredictor driving `step` one tick at a time (`compile`: see TorchPredictor)."""
        return TorchPredictor(self, compile=compile)

    def num_parameters(self) -> int:
        """Number of trainable and fitted parameters (buffers holding statistics excluded)."""
        return sum(p.numel() for p in self.parameters())


class TorchPredictor:
    """Streams ticks through a SequenceModel's `step`, holding its explicit state between calls.

    With `compile=True` the step goes through `torch.compile` (static shapes): the first
    step compiles it (seconds to a minute, and a C++ compiler must be on PATH), later steps run the
    fused kernels at a fraction of the eager dispatch cost of a batch-1 tick. The outputs equal the
    eager step's to float rounding.
    """

    def __init__(self, model: SequenceModel, compile: bool = False):
        self.model = model.eval()
        self.device = model.device
        self.state: dict[str, torch.Tensor] = {}
        suffixes = ("", "_age_s", "_valid", "_mask")
        self.keys = {"dt_s"} | {s + x for s in model.config.inputs for x in suffixes}  # what step reads
        self._step = torch.compile(model.step, dynamic=False) if compile else model.step
        self.reset()

    def reset(self) -> None:
        """Forget all state: the next `step` is the first tick of a new log."""
        self.state = self.model.init_state(1)

    def step(self, tick: dict[str, np.ndarray]) -> Prediction:
        """Consume one tick's inputs (numpy, no batch axis) and return its prediction."""
        x = {k: torch.as_tensor(np.asarray(v)[None], device=self.device) for k, v in tick.items() if k in self.keys}
        with torch.inference_mode():
            out, self.state = self._step(x, self.state)
        if "logits" in out:
            probs = torch.softmax(out["logits"][0], -1).cpu().numpy()
            return Prediction(mean=np.asarray(np.argmax(probs)), probs=probs)
        var = out.get("var")
        return Prediction(mean=out["mean"][0].cpu().numpy(), var=None if var is None else var[0].cpu().numpy())
