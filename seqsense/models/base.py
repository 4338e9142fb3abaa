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

**Memoryless twins.** `config.memoryless=True` makes a model its family's memoryless twin: the same
modules, parameter names and count (so the same seed gives the same initialization), with memory
cut. Its prediction at a tick is the family's prediction from its reset state given that tick alone,
`step(tick, init_state(B))` (the tick's dt_s may still be read). This is built here once for every
family: `SequenceModel.__init_subclass__` wraps each family's `forward`, `loss`, `init_state` and
`step`, so that for a twin
- offline, windows (B, T, ...) are folded into B·T windows of one tick (`fold_ticks`), run through
  the family's own code, and unfolded back to (B, T, ...);
- streaming, the state is `{}` (export shows a twin has none) and each `step` runs the family's step
  from its reset state.
Training and `fit_extra` therefore see the twin as what it is (a family's fit that is not written in
terms of `loss` checks `self.config.memoryless` itself). A family opts a method out of the wrapping
with `@twin_aware` when it handles twins in its own form. `twin_overrides()` gives the config
overrides that turn a config into its twin; `has_memory` says whether an instance has memory.
"""

from __future__ import annotations

import dataclasses
import functools
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
    memoryless: bool = False  # this model is its family's memoryless twin: same architecture and parameters, memory cut

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
        if not isinstance(self.memoryless, (bool, np.bool_)):
            raise ConfigError(f"{type(self).__name__}: memoryless must be true or false, got {self.memoryless!r}.")
        self.memoryless = bool(self.memoryless)
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


def fold_ticks(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Windows (B, T, ...) -> (B·T, 1, ...): every tick a window of its own (what a twin sees)."""
    lead = tuple(batch["dt_s"].shape[:2])  # (B, T)
    n = lead[0] * lead[1]
    return {k: v.reshape(n, 1, *v.shape[2:]) if v.dim() >= 2 and tuple(v.shape[:2]) == lead else v for k, v in batch.items()}


def unfold_ticks(out: dict[str, torch.Tensor], lead: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Outputs (B·T, 1, ...) of folded windows -> (B, T, ...)."""
    return {k: v.reshape(*lead, *v.shape[2:]) for k, v in out.items()}


def twin_aware(fn: Callable) -> Callable:
    """Mark a family method that handles `config.memoryless` itself, so the base class leaves it unwrapped."""
    fn.twin_aware = True
    return fn


def _run_full(model: "SequenceModel", fn: Callable, *args):
    """`fn(model, *args)` with the twin's cut lifted: nested calls run the family's own (full) code."""
    model._memory_cut = False
    try:
        return fn(model, *args)
    finally:
        model._memory_cut = True


def _twin_forward(fn: Callable) -> Callable:
    """`forward` for twins: fold the windows into single ticks, run the family's forward, unfold."""

    @functools.wraps(fn)
    def forward(self, batch):
        if not self._memory_cut:
            return fn(self, batch)
        lead = tuple(batch["dt_s"].shape[:2])
        return unfold_ticks(_run_full(self, fn, fold_ticks(batch)), lead)

    return twin_aware(forward)


def _twin_loss(fn: Callable) -> Callable:
    """`loss` for twins: the family's loss over the windows folded into single ticks."""

    @functools.wraps(fn)
    def loss(self, batch):
        return _run_full(self, fn, fold_ticks(batch)) if self._memory_cut else fn(self, batch)

    return twin_aware(loss)


def _twin_init_state(fn: Callable) -> Callable:
    """`init_state` for twins: no state."""

    @functools.wraps(fn)
    def init_state(self, batch_size: int = 1):
        return {} if self._memory_cut else fn(self, batch_size)

    return twin_aware(init_state)


def _twin_step(fn: Callable) -> Callable:
    """`step` for twins: the family's step from its reset state; the state stays `{}`."""

    @functools.wraps(fn)
    def step(self, tick, state):
        if not self._memory_cut:
            return fn(self, tick, state)
        reset = _run_full(self, type(self).init_state, tick["dt_s"].shape[0])
        out, _ = _run_full(self, fn, tick, reset)
        return out, {}

    return twin_aware(step)


TWIN_WRAPPERS = {"forward": _twin_forward, "loss": _twin_loss, "init_state": _twin_init_state, "step": _twin_step}


class SequenceModel(nn.Module):
    """Base of every family: owns the config, the stream info, and the normalization statistics."""

    family = "base"
    config_cls = ModelConfig
    memoryless = False  # True for families whose prediction at a tick uses only that tick
    input_kinds: tuple[str, ...] = ("image", "vector", "scalar")  # stream kinds the family can read
    reads_packed = True  # whether the family can read high-rate inputs packed K samples a tick (else: latest sample)
    target_kinds: tuple[str, ...] = ("vector", "scalar", "label", "event")  # and can predict

    def __init_subclass__(cls, **kwargs):
        """Wrap the family's forward/loss/init_state/step so that a twin cuts memory (module docstring)."""
        super().__init_subclass__(**kwargs)
        for name, wrap in TWIN_WRAPPERS.items():
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "twin_aware", False):
                setattr(cls, name, wrap(fn))

    @classmethod
    def twin_overrides(cls) -> dict:
        """Config overrides that turn a config of this family into its memoryless twin ({} if it is its own)."""
        return {} if cls.memoryless else {"memoryless": True}

    @property
    def has_memory(self) -> bool:
        """Whether a prediction can depend on earlier ticks (False for memoryless families and for twins)."""
        return not (type(self).memoryless or self.config.memoryless)

    @classmethod
    def check_streams(cls, config: ModelConfig, streams: dict[str, StreamInfo]) -> None:
        """ConfigError if an input or the target is missing or of a kind this family cannot handle."""
        missing = [s for s in (*config.inputs, config.target) if s not in streams]
        if missing:
            raise ConfigError(f"Model {cls.family!r}: stream(s) {missing} are not in the data; streams: {sorted(streams)}.")
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
        self._memory_cut = bool(config.memoryless) and not type(self).memoryless  # False while a twin runs its family's code
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
        """The state at reset (an empty dict for memoryless families and twins)."""
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
