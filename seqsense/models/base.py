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

**Stateful windows (truncated back-propagation through time).** A window of T ticks is too short to
learn what integrates over seconds (a 16-tick window of a 285 Hz IMU is 56 ms). A family whose state
can be carried from one window into the next declares `supports_stateful = True` and implements

    forward_stateful(batch, state) -> (out, next_state)

over windows (B, T, ...) that continue from `state` (`None`: `init_state(B)`), returning the outputs
of `forward` and the state after the window's last tick, in the layout of `init_state`/`step` (so a
loop of `step` over the concatenated windows gives the same numbers). `state_batch_dims` names the
batch axis of each state tensor that is not axis 0 (an RNN's h is (layers, B, H)), so that
`reset_rows(state, reset)` can put single rows back to `init_state` when their stream of windows
moves to another episode. With `ModelConfig.stateful=True` the training loop
(`seqsense.train`) reads `stateful_batch` episode streams side by side, `tbptt_window` ticks at a
time in episode order (`seqsense.dataset.ConsecutiveWindows`), calls `loss_stateful(batch, state)`
and carries the returned state, detached, into the next window. Memoryless families and twins have
no state to carry (`forward_stateful` is `forward` with state `{}`); a family with memory that does not
implement it gets a ConfigError naming the families that do. Validation windows still start from reset.
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
from seqsense.ticks import BuiltTicks

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
    stateful: bool = False  # train by truncated BPTT: the state is carried (detached) from window to window of an episode
    tbptt_window: int = 0  # ticks per stateful training window; 0 = `window`
    stateful_batch: int = 0  # episode streams read side by side in stateful training; 0 = `batch_size`
    rotate_augment: tuple[str, ...] = ()  # 3-vector input slices turned with the target by random rotations in training (seqsense.augment)

    def __post_init__(self):
        self.inputs = tuple(self.inputs)
        self.rotate_augment = tuple(self.rotate_augment)
        from seqsense.config import STREAM_SLICE

        for spec in self.rotate_augment:
            if not isinstance(spec, str) or not STREAM_SLICE.match(spec):
                raise ConfigError(f"{type(self).__name__}: rotate_augment entries must be 'stream' or 'stream[i:j]', got {spec!r}.")
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
        if not isinstance(self.stateful, (bool, np.bool_)):
            raise ConfigError(f"{type(self).__name__}: stateful must be true or false, got {self.stateful!r}.")
        self.stateful = bool(self.stateful)
        if self.tbptt_window < 0 or self.stateful_batch < 0:
            raise ConfigError(
                f"{type(self).__name__}: tbptt_window and stateful_batch must be >= 0 (0 = window / batch_size); "
                f"got tbptt_window={self.tbptt_window}, stateful_batch={self.stateful_batch}."
            )
        if self.val_every < 1 or self.num_classes < 0 or self.grad_clip < 0:
            raise ConfigError(
                f"{type(self).__name__}: need val_every >= 1, num_classes >= 0, grad_clip >= 0; "
                f"got val_every={self.val_every}, num_classes={self.num_classes}, grad_clip={self.grad_clip}."
            )

    @property
    def train_window(self) -> int:
        """Ticks per training window: `tbptt_window` (or `window`) when stateful, else `window`."""
        return (self.tbptt_window or self.window) if self.stateful else self.window

    @property
    def train_rows(self) -> int:
        """Windows per training batch: `stateful_batch` (or `batch_size`) episode streams when stateful."""
        return (self.stateful_batch or self.batch_size) if self.stateful else self.batch_size

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


def _twin_forward_stateful(fn: Callable) -> Callable:
    """`forward_stateful` for twins: the twin's forward (ticks folded); there is no state to carry."""

    @functools.wraps(fn)
    def forward_stateful(self, batch, state=None):
        if not self._memory_cut:
            return fn(self, batch, state)
        return self(batch), {}

    return twin_aware(forward_stateful)


TWIN_WRAPPERS = {"forward": _twin_forward, "loss": _twin_loss, "init_state": _twin_init_state, "step": _twin_step,
                 "forward_stateful": _twin_forward_stateful}


class SequenceModel(nn.Module):
    """Base of every family: owns the config, the stream info, and the normalization statistics."""

    family = "base"
    config_cls = ModelConfig
    memoryless = False  # True for families whose prediction at a tick uses only that tick
    input_kinds: tuple[str, ...] = ("image", "vector", "scalar")  # stream kinds the family can read
    reads_packed = True  # whether the family can read high-rate inputs packed K samples a tick (else: latest sample)
    target_kinds: tuple[str, ...] = ("vector", "scalar", "label", "event")  # and can predict
    supports_stateful = False  # whether forward_stateful carries the state across windows (module docstring)
    state_batch_dims: dict[str, int] = {}  # state key -> its batch axis, where that is not 0

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
            able = sorted(n for n, (c, _) in MODELS.items() if kind in c.target_kinds)
            raise ConfigError(
                f"Model {cls.family!r} cannot predict {kind} stream {config.target!r}; "
                f"target kinds it accepts: {', '.join(cls.target_kinds)}. Families that predict {kind} targets: {', '.join(able) or 'none'}."
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
        return self.loss_of(self(batch), batch)

    def forward_stateful(self, batch: dict[str, torch.Tensor], state: dict[str, torch.Tensor] | None = None):
        """Windows (B, T, ...) continuing from `state` (None: reset) -> (out as `forward`, state after the last tick)."""
        if not self.has_memory:
            return self(batch), {}
        raise self.stateful_error()

    def stateful_error(self) -> ConfigError:
        """The error for stateful training of a family with memory that does not implement `forward_stateful`."""
        able = sorted(n for n, (cls, _) in MODELS.items() if cls.supports_stateful or cls.memoryless)
        return ConfigError(
            f"Model {self.family!r} cannot carry its state across training windows (stateful=true); families that can: "
            f"{', '.join(able)}. Train {self.family!r} with stateful=false (and a longer window), or pick one of those."
        )

    def loss_stateful(self, batch: dict[str, torch.Tensor], state: dict[str, torch.Tensor] | None = None):
        """(`loss` of windows continuing from `state`, the state after them) for stateful training.

        Windows read in episode order cannot skip a stretch without a valid target (truth dropouts):
        such a batch's loss is 0, still tied to the outputs so that every process of a DDP run steps alike.
        """
        out, nxt = self.forward_stateful(batch, state)
        if not bool((batch["target_valid"] & ~batch["tick_is_pad"]).any()):
            return sum(v.sum() for v in out.values()) * 0.0, nxt
        return self.loss_of(out, batch), nxt

    def reset_rows(self, state: dict[str, torch.Tensor], reset: torch.Tensor) -> dict[str, torch.Tensor]:
        """`state` with the rows where `reset` (B,) bool is True put back to `init_state`."""
        if not state:
            return state
        fresh = self.init_state(int(reset.shape[0]))
        out = {}
        for k, v in state.items():
            dim = self.state_batch_dims.get(k, 0)
            shape = [1] * v.dim()
            shape[dim] = -1
            out[k] = torch.where(reset.to(v.device).reshape(shape), fresh[k].to(v.dtype), v)
        return out

    def loss_of(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of outputs `out` of windows `batch` over its valid ticks (see `loss`)."""
        valid = batch["target_valid"] & ~batch["tick_is_pad"]
        if self.discrete:
            logits = out["logits"][valid]
            return nn.functional.cross_entropy(logits, batch["target"][valid].long())
        y = (batch["target"] - self.target_mean) / self.target_std
        mu = (out["mean"] - self.target_mean) / self.target_std
        var = out["var"] / self.target_std**2
        nll = 0.5 * (torch.log(var) + (y - mu) ** 2 / var)
        return nll[valid].mean()

    def fit_start(self, train_dataset, log=print) -> None:
        """Fitting a family does before the SGD loop (e.g. a filter's noise that the learned part then corrects)."""

    def fit_extra(self, train_dataset, log=print, val_dataset=None) -> None:
        """Closed-form or marginal-likelihood fitting a family does besides (or instead of) SGD.

        `val_dataset` (the validation episodes training split off, or None) lets a fit check itself there.
        """

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


class TorchPredictor(BuiltTicks):
    """Streams a SequenceModel's `step` under the predictor contract (`seqsense.predictor`), holding its explicit state.

    `step(t_ns, observations)` builds the tick with the same `seqsense.ticks.TickBuilder` the exported
    runtime uses; `step_tick(tick)` is the internal adapter taking a dataset tick as it is (replay).
    With `compile=True` the step goes through `torch.compile` (static shapes): the first
    step compiles it (seconds to a minute, and a C++ compiler must be on PATH), later steps run the
    fused kernels at a fraction of the eager dispatch cost of a batch-1 tick. The outputs equal the
    eager step's to float rounding.
    """

    def __init__(self, model: SequenceModel, compile: bool = False):
        from seqsense.ticks import TickBuilder

        self.model = model.eval()
        self.device = model.device
        self.state: dict[str, torch.Tensor] = {}
        suffixes = ("", "_age_s", "_valid", "_mask")
        self.keys = {"dt_s"} | {s + x for s in model.config.inputs for x in suffixes}  # what step reads
        self.builder = TickBuilder.from_config(model.config, model.streams, batch=True)
        self.tick = self.builder.tick  # (1, ...) arrays, refilled at every `step`
        self._step = torch.compile(model.step, dynamic=False) if compile else model.step
        self.reset()

    def reset(self) -> None:
        """Forget all state: the next step is the first tick of a new log."""
        self.state = self.model.init_state(1)
        self.builder.reset()

    def step(self, t_ns: int, observations: dict) -> Prediction:
        """Consume the samples that arrived by tick time `t_ns` (ns) and return the tick's prediction."""
        tick = self.builder.build(t_ns, observations)
        # copies: a family may keep an input tensor in its state, and the builder refills its arrays
        return self._run({k: torch.tensor(v, device=self.device) for k, v in tick.items() if k in self.keys})

    def step_tick(self, tick: dict[str, np.ndarray]) -> Prediction:
        """Internal adapter: one dataset-style tick (numpy, no batch axis) as it is, without sampling."""
        return self._run({k: torch.as_tensor(np.asarray(v)[None], device=self.device) for k, v in tick.items() if k in self.keys})

    def _run(self, x: dict[str, torch.Tensor]) -> Prediction:
        with torch.inference_mode():
            out, self.state = self._step(x, self.state)
        if "logits" in out:
            probs = torch.softmax(out["logits"][0], -1).cpu().numpy()
            return Prediction(mean=np.asarray(np.argmax(probs)), probs=probs)
        var = out.get("var")
        return Prediction(mean=out["mean"][0].cpu().numpy(), var=None if var is None else var[0].cpu().numpy())
