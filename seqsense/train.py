"""Training any registered model family on logs: one process or `torchrun` (DDP), resumable.

`train()` is the API the study calls in-process; `seqsense train` is a thin CLI over it. A run dir
holds `metrics.csv`, checkpoints `best.*` / `last.*` (see `seqsense.models.checkpoint`) and the
resumable state `train_state.safetensors` + `train_state.json` (model weights, optimizer tensors,
step, RNG state). Batches are a pure function of (seed, rank, step) (`BatchSchedule`), so a run
killed and resumed with `resume=True` ends with the same weights as an unbroken run.

Under `torchrun --nproc_per_node N` the training episodes are dealt to ranks (disjoint episodes per
rank), gradients are averaged by DDP (gloo on CPU, NCCL on GPU) and only rank 0 writes files.
Families that fit in closed form or by marginal likelihood hook in through `fit_extra`, which runs
after the SGD loop (or alone when the model has nothing for SGD to train); `fit_start` runs before it
(a hybrid fits its filter's noise there, so its learned part starts from the fitted filter).

**Stateful training** (`--set stateful=true`): instead of windows drawn at random from reset,
`stateful_batch` rows each read episodes in order, `tbptt_window` ticks at a time
(`seqsense.dataset.ConsecutiveWindows`); the model's state after one window is carried, detached,
into the row's next window and reset where the row moves to another episode (truncated BPTT), so a
recurrent model can learn what integrates over many windows. Validation windows start from reset as
before. A resumed stateful run restarts its carried states at the resume step (the batches are the
same; the weights differ slightly from an unbroken run's).

Defaults for a raw IMU of 100–1,000 Hz (`STATEFUL_IMU_DEFAULTS`): the model runs on a 50 Hz clock with
the IMU streams packed (all samples since the previous tick, up to `packed_slots(rate)`), stateful
windows of 64 ticks (1.3 s), 8 episode streams per batch.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from seqsense.config import apply_overrides, config_to_dict, parse_overrides
from seqsense.dataset import (ConsecutiveWindows, StatefulWindows, WindowDataset, compute_normalization, episode_refs,
                              resolve_paths, split_episodes)
from seqsense.errors import ConfigError, SeqsenseError
from seqsense.log.reader import open_log
from seqsense.models.base import ModelConfig, SequenceModel, get_model_class
from seqsense.models.checkpoint import load_checkpoint, load_train_state, read_train_state_info, save_checkpoint, save_train_state

MAX_VAL_BATCHES = 50  # validation cost stays bounded on long logs
STATEFUL_IMU_DEFAULTS = {"rate_hz": 50.0, "stateful": True, "tbptt_window": 64, "stateful_batch": 8}


def packed_slots(sensor_rate_hz: float, clock_rate_hz: float = 50.0) -> int:
    """Slots K to pack a sensor of `sensor_rate_hz` on a `clock_rate_hz` clock: every sample since the last tick, with jitter room."""
    if not (sensor_rate_hz > 0 and clock_rate_hz > 0):
        raise ConfigError(f"packed_slots: rates must be > 0, got sensor {sensor_rate_hz} Hz, clock {clock_rate_hz} Hz.")
    return int(math.ceil(sensor_rate_hz / clock_rate_hz)) + 2


def stateful_imu_overrides(imu_streams: Sequence[str], sensor_rate_hz: float, clock_rate_hz: float = 50.0) -> dict:
    """Config overrides for a learned filter on a raw IMU: `STATEFUL_IMU_DEFAULTS` with `imu_streams` packed."""
    k = packed_slots(sensor_rate_hz, clock_rate_hz)
    return {**STATEFUL_IMU_DEFAULTS, "rate_hz": float(clock_rate_hz), "packed": {s: k for s in imu_streams}}
METRIC_FIELDS = ["step", "time_s", "lr", "train_loss", "val_loss", "windows_per_s"]


@dataclasses.dataclass
class TrainResult:
    """What a training run produced: where, the model (best on validation), and its numbers."""

    run_dir: Path
    model: SequenceModel
    family: str
    config: ModelConfig
    num_parameters: int
    steps: int  # optimizer steps in total (0 for models fitted only by fit_extra)
    seconds: float  # wall time of this call's training (validation and saving included)
    windows_per_s: float  # training windows per second over all ranks (0 without SGD)
    train_loss: float  # mean loss over the last logging interval
    val_loss: float  # held-out loss of the returned model (NaN without validation episodes)
    best_step: int
    world_size: int = 1


@dataclasses.dataclass
class DistInfo:
    """This process's place under torchrun (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        """Read RANK / WORLD_SIZE / LOCAL_RANK as set by torchrun."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


class BatchSchedule:
    """Batches of window indices as a pure function of (seed, step): epoch-wise permutations.

    With `pool` (window indices), batches are drawn from those windows only; `n` is then len(pool).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0, stop: int | None = None,
                 pool: np.ndarray | None = None):
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.per_epoch = n // self.batch_size
        self.start, self.stop = start, stop
        self.pool = pool
        self._perm: tuple[int, np.ndarray] | None = None

    def indices(self, step: int) -> list[int]:
        """Window indices of the batch at 0-based `step`."""
        epoch, j = divmod(step, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        picked = self._perm[1][j * self.batch_size : (j + 1) * self.batch_size]
        return (picked if self.pool is None else self.pool[picked]).tolist()

    def __iter__(self):
        k = self.start
        while self.stop is None or k < self.stop:
            yield self.indices(k)
            k += 1


def resolve_device(device: str, info: DistInfo) -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> a torch device (cuda:LOCAL_RANK under torchrun)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device; use --device cpu or auto.")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", info.local_rank)


def default_streams(paths: Sequence[Path]) -> tuple[tuple[str, ...] | None, str | None]:
    """(inputs, target) from the first log's provenance, or (None, None)."""
    log = open_log(paths[0])
    prov = log.provenance
    log.close()
    inputs = prov.get("inputs")
    return (tuple(inputs) if inputs else None), prov.get("target")


def check_streams(refs: Sequence[tuple[str, str]], config: ModelConfig) -> None:
    """SeqsenseError if a stream is unknown everywhere or missing from some episodes (naming them)."""
    names = (*config.inputs, config.target) + ((config.clock,) if config.clock else ())
    present: dict[str, list[str]] = {n: [] for n in names}
    missing: dict[str, list[str]] = {n: [] for n in names}
    all_streams: set[str] = set()
    logs = {}
    for f, e in refs:
        log = logs.setdefault(f, open_log(f))
        streams = log.episode(e).stream_names
        all_streams.update(streams)
        for n in names:
            (present if n in streams else missing)[n].append(f"{Path(f).name}:{e}")
    for log in logs.values():
        log.close()
    for n in names:
        role = "target" if n == config.target else "clock" if n == config.clock else "input"
        if not present[n]:
            raise SeqsenseError(f"Unknown {role} stream {n!r}: no episode has it; streams in the logs: {sorted(all_streams)}.")
        if missing[n]:
            shown = ", ".join(missing[n][:5]) + (" ..." if len(missing[n]) > 5 else "")
            raise SeqsenseError(
                f"The {role} stream {n!r} is missing from {len(missing[n])} of {len(refs)} episode(s): {shown}. "
                "Train on logs that all have it, or pick another stream."
            )


def build_config(family: str, paths: Sequence[Path], overrides, inputs=None, target=None) -> ModelConfig:
    """The family's config with overrides applied; inputs/target default to the log's provenance."""
    _, config_cls = get_model_class(family)
    overrides = dict(parse_overrides(overrides)) if not isinstance(overrides, dict) else dict(overrides or {})
    d_inputs, d_target = default_streams(paths)
    if inputs:
        overrides["inputs"] = tuple(inputs)
    if target:
        overrides["target"] = target
    overrides.setdefault("inputs", d_inputs)
    overrides.setdefault("target", d_target)
    if not overrides["inputs"] or not overrides["target"]:
        raise ConfigError(
            f"Which streams to train on? Log '{paths[0]}' names no default inputs/target in its provenance; "
            "pass --inputs STREAM[,STREAM...] and --target STREAM."
        )
    return apply_overrides(config_cls(), overrides)


def _infer_num_classes(config: ModelConfig, datasets: Sequence[WindowDataset | None]) -> ModelConfig:
    """Set num_classes of a label target from the labels seen (train and val), if not given."""
    labels = [ds.index(k).target for ds in datasets if ds is not None for k in range(len(ds.episodes))]
    if labels[0].ndim != 1:
        return config
    top = max(int(y.max()) for y in labels) + 1
    if config.num_classes == 0:
        return dataclasses.replace(config, num_classes=max(top, 2))
    if top > config.num_classes:
        raise ConfigError(f"Label target {config.target!r} has class {top - 1}, but num_classes={config.num_classes}.")
    return config


def checked_normalization(ds: WindowDataset) -> dict:
    """compute_normalization over `ds`, or SeqsenseError naming the episode whose stream holds NaN/Inf."""
    stats = compute_normalization(ds)
    for name, st in stats.items():
        if np.all(np.isfinite(st["mean"])) and np.all(np.isfinite(st["std"])):
            continue
        for k, (f, e) in enumerate(ds.episodes):
            idx = ds.index(k)
            x = idx.read(0, len(idx))[name]
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(-1)
            if bad.any():
                raise SeqsenseError(
                    f"NaN/Inf in input stream {name!r} (Log '{f}' episode '{e}', tick {int(np.argmax(bad))}). "
                    "Run `seqsense inspect --validate` on the log and repair or drop that episode."
                )
        raise SeqsenseError(f"The normalization statistics of {name!r} are not finite; check the training logs for NaN/Inf.")
    return stats


def _lr_at(step: int, config: ModelConfig) -> float:
    """Linear warm-up, then cosine decay to 10 % over `steps` (constant when only a time budget is set)."""
    warm = max(1, min(50, config.steps // 10)) if config.steps else 20
    if step < warm:
        return config.lr * (step + 1) / warm
    if not config.steps:
        return config.lr
    frac = min(1.0, (step - warm) / max(1, config.steps - warm))
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def check_finite(batch: dict[str, torch.Tensor], where: Callable[[int], str]) -> None:
    """SeqsenseError naming the stream and window if a float input of the batch holds NaN/Inf."""
    for key, v in batch.items():
        if v.is_floating_point() and key != "target":
            bad = ~torch.isfinite(v.reshape(v.shape[0], v.shape[1], -1)).all(-1)  # (B, T)
            if bad.any():
                b, t = (int(i) for i in bad.nonzero()[0])
                stream = key.removesuffix("_age_s")
                raise SeqsenseError(
                    f"NaN/Inf in input stream {stream!r} ({where(b)}, tick {t} of the window). "
                    "Run `seqsense inspect --validate` on the log and repair or drop that episode."
                )


class _LossModule(torch.nn.Module):
    """Wraps a model so that DDP's forward hook sees the loss computation."""

    def __init__(self, model: SequenceModel):
        super().__init__()
        self.model = model

    def forward(self, batch, state=None, stateful: bool = False):
        """The batch's loss, or with `stateful` (loss, next state) continuing from `state`."""
        return self.model.loss_stateful(batch, state) if stateful else self.model.loss(batch)


def scored_windows(ds: WindowDataset) -> np.ndarray:
    """Indices of the windows of `ds` holding at least one valid target tick (the others score nothing)."""
    keep = np.zeros(len(ds), bool)
    for k in np.unique(ds.starts[:, 0]):
        rows = np.flatnonzero(ds.starts[:, 0] == k)
        seen = np.concatenate([[0], np.cumsum(ds.index(int(k)).target_valid)])  # valid ticks before each tick
        s = ds.starts[rows, 1]
        keep[rows] = seen[np.minimum(s + ds.spec.window, len(seen) - 1)] > seen[s]
    return np.flatnonzero(keep)


@torch.no_grad()
def evaluate_loss(model: SequenceModel, ds: WindowDataset | None, device: torch.device, batch_size: int) -> float:
    """Mean loss over the valid target ticks of (up to MAX_VAL_BATCHES batches of) `ds`, in a fixed order.

    `model.loss` is a mean over a batch's valid ticks, so each batch weighs by its count of them and
    windows without any (truth with NaN gaps, e.g. motion-capture dropouts) are skipped. NaN without
    data or without a single valid target tick.
    """
    if ds is None:
        return float("nan")
    if model.config.stateful and model.has_memory and model.supports_stateful:
        return _evaluate_loss_stateful(model, ds, device, MAX_VAL_BATCHES * batch_size)
    windows = scored_windows(ds)[: MAX_VAL_BATCHES * batch_size]
    model.eval()
    total, n = 0.0, 0
    for start in range(0, len(windows), batch_size):
        idx = windows[start : start + batch_size].tolist()
        batch = ds.__getitems__(idx)
        check_finite(batch, lambda b: _window_name(ds, idx[b]))
        valid = int((batch["target_valid"] & ~batch["tick_is_pad"]).sum())
        batch = {k: v.to(device) for k, v in batch.items()}
        total += float(model.loss(batch)) * valid
        n += valid
    model.train()
    return total / n if n else float("nan")


def _evaluate_loss_stateful(model: SequenceModel, ds: WindowDataset, device: torch.device, max_windows: int) -> float:
    """The loss of a stateful model as it trains and runs: each episode of `ds` read window after window
    from its start, the state carried through (up to `max_windows` windows in all, whole episodes first).

    Validated on windows that each start from a reset state, a model trained to integrate over seconds
    would be judged on the first fraction of a second of every window only."""
    model.eval()
    total, n, used = 0.0, 0, 0
    T = ds.spec.window
    for k, length in enumerate(ds.lengths):
        state = model.init_state(1)
        for start in range(0, int(length), T):
            if used >= max_windows:
                break
            used += 1
            batch = ds.read_windows([(k, start)])
            check_finite(batch, lambda b: _window_name_at(ds, k, start))
            valid = int((batch["target_valid"] & ~batch["tick_is_pad"]).sum())
            batch = {key: v.to(device) for key, v in batch.items()}
            loss, state = model.loss_stateful(batch, state)
            if valid:
                total += float(loss) * valid
                n += valid
    model.train()
    return total / n if n else float("nan")


def _window_name_at(ds: WindowDataset, k: int, start: int) -> str:
    f, e = ds.episodes[int(k)]
    return f"Log '{f}' episode '{e}', window starting at tick {int(start)}"


def _stateful_window_name(ds: WindowDataset, row: tuple[int, int, bool]) -> str:
    f, e = ds.episodes[int(row[0])]
    return f"Log '{f}' episode '{e}', window starting at tick {int(row[1])}"


def _window_name(ds: WindowDataset, i: int) -> str:
    k, s = ds.starts[i]
    f, e = ds.episodes[int(k)]
    return f"Log '{f}' episode '{e}', window starting at tick {int(s)}"


class _Metrics:
    """Appends rows to RUN_DIR/metrics.csv (and TensorBoard when installed); rank 0 only."""

    def __init__(self, run_dir: Path | None, resume_step: int):
        self.path = run_dir / "metrics.csv" if run_dir else None
        self.tb = None
        if self.path is None:
            return
        rows = []
        if resume_step and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, METRIC_FIELDS)
            w.writeheader()
            w.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # tensorboard not installed: CSV only
            self.tb = None

    def write(self, row: dict) -> None:
        """Append one row (missing fields blank)."""
        if self.path is None:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS).writerow({k: row.get(k, "") for k in METRIC_FIELDS})
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(
    family: str,
    data_paths: Sequence[str | os.PathLike],
    config_overrides: dict | Sequence[str] | None = None,
    out_dir: str | os.PathLike = "runs/run",
    *,
    inputs: Sequence[str] | None = None,
    target: str | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    num_workers: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
    init_encoder: str | os.PathLike | None = None,
) -> TrainResult:
    """Train model `family` on the logs `data_paths` into run dir `out_dir`; see the module docstring.

    `config_overrides` are the family config's fields ({"hidden": 32} or ["hidden=32"]); `inputs` and
    `target` default to the first log's provenance. `on_step(step, loss)` is called after each step.
    `init_encoder` (a checkpoint or run dir) starts the shared TickEncoder from that model's weights.
    """
    info = DistInfo.from_env()
    dev = resolve_device(device, info)
    own_group = info.world > 1 and not dist.is_initialized()
    if own_group:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        run = _Run(family, data_paths, config_overrides, Path(out_dir), inputs, target, dev, info, log)
        if init_encoder is not None and not resume:
            warm_start_encoder(run.model, init_encoder)
        return run.execute(resume, progress, num_workers, on_step)
    finally:
        if own_group:
            dist.destroy_process_group()


def warm_start_encoder(model: SequenceModel, source: str | os.PathLike) -> int:
    """Copy the shared encoder's weights (`encoder.*`) of the checkpoint `source` into `model`.

    The study trains one per-frame encoder per cell and starts every family from it, so frames are
    learned once and each family spends its budget on its own part. Returns the tensors copied;
    ConfigError if the encoders differ in shape (different inputs or sizes).
    """
    from seqsense.models.checkpoint import checkpoint_paths, read_checkpoint_meta, read_weights

    weights_path, _ = checkpoint_paths(source)
    tensors = read_weights(weights_path, read_checkpoint_meta(source)["weights_sha256"])
    own = model.state_dict()
    enc = {k: v for k, v in tensors.items() if k.startswith("encoder.")}
    bad = [k for k, v in enc.items() if k not in own or own[k].shape != v.shape]
    if not enc or bad:
        raise ConfigError(f"Cannot start the encoder from '{source}': its encoder does not fit this model ({bad[:3] or 'no encoder weights'}).")
    model.load_state_dict(enc, strict=False)
    return len(enc)


class _Run:
    """One training run: its config, data split, model, and the files of its run dir (rank 0 writes)."""

    def __init__(self, family, data_paths, overrides, run_dir: Path, inputs, target, dev: torch.device, info: DistInfo, log):
        self.info, self.dev, self.run_dir, self.family = info, dev, run_dir, family
        self.rank0 = info.rank == 0
        self.log = (log or (lambda msg: print(msg, file=sys.stderr))) if self.rank0 else (lambda msg: None)
        paths = resolve_paths(data_paths)
        if not paths:
            raise ConfigError("No logs given to train on (--data LOG ...).")
        self.model_cls, _ = get_model_class(family)
        config = build_config(family, paths, overrides, inputs, target)
        refs = episode_refs(paths)
        check_streams(refs, config)
        train_refs, val_refs = split_episodes(refs, config.val_fraction, config.seed)
        if len(train_refs) < info.world:
            raise SeqsenseError(f"{len(train_refs)} training episode(s) cannot be dealt to {info.world} processes; use fewer processes or more episodes.")
        spec = config.window_spec(window=config.train_window) if config.stateful else config.window_spec()
        self.train_ds = WindowDataset(train_refs, spec)
        self.val_ds = WindowDataset(val_refs, config.window_spec()) if val_refs else None
        self.config = _infer_num_classes(config, [self.train_ds, self.val_ds])
        streams = self.train_ds.stream_info()
        self.model_cls.check_streams(self.config, streams)
        torch.manual_seed(self.config.seed)
        normalization = checked_normalization(self.train_ds)
        self.rotator = None
        if self.config.rotate_augment:
            from seqsense.augment import Rotator, isotropic_normalization, parse_slices

            slices = parse_slices(self.config.rotate_augment, self.config.inputs, streams, self.config.target, streams[self.config.target])
            normalization = isotropic_normalization(normalization, slices)
            self.rotator = Rotator(slices, self.config.seed)
        self.model = self.model_cls(self.config, streams, normalization).to(dev)
        if self.model.trains_by_sgd and self.config.steps == 0 and self.config.time_budget_s == 0:
            raise ConfigError(
                f"Model {family!r} trains by gradient steps, so steps=0 would save an untrained model: use "
                "--set steps=N with N >= 1 (or a time budget, --set time_budget_s=S). Only filters fitted in closed "
                "form (kalman without SGD parameters, ekf) accept steps=0."
            )
        if self.config.stateful and self.model.has_memory and not self.model.supports_stateful:
            raise self.model.stateful_error()
        mine = train_refs[info.rank :: info.world]  # disjoint episodes per rank
        self.rank_ds = self.train_ds if info.world == 1 else WindowDataset(mine, spec)
        self.provenance = {
            "data": [str(p) for p in paths],
            "split": {"train": [f"{Path(f).name}:{e}" for f, e in train_refs], "val": [f"{Path(f).name}:{e}" for f, e in val_refs]},
            "world_size": info.world,
            "device": str(dev),
        }
        self.best_val, self.best_step, self.step, self.elapsed_s, self.fitted_extra = math.inf, 0, 0, 0.0, False
        if self.val_ds is not None and not len(scored_windows(self.val_ds)):
            self.log(f"The {len(val_refs)} validation episode(s) hold no valid tick of target {self.config.target!r} "
                     "(NaN or missing throughout), so validation cannot rank checkpoints: the best checkpoint is the last step.")
        if self.rank0:
            run_dir.mkdir(parents=True, exist_ok=True)

    def _resume(self, optimizer) -> None:
        """Restore step, best, weights and optimizer from RUN_DIR/train_state, checking the config."""
        meta = read_train_state_info(self.run_dir / "train_state")
        if meta.get("family") != self.family:
            raise ConfigError(f"Cannot resume '{self.run_dir}': it trained {meta.get('family')!r}, not {self.family!r}.")
        saved, now = meta.get("config", {}), config_to_dict(self.config)
        changed = [k for k in now if k not in ("steps", "time_budget_s", "val_every") and saved.get(k) != now[k]]
        if changed:
            diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
            raise ConfigError(f"Cannot resume '{self.run_dir}' with a different config ({diffs}); only steps/time_budget_s/val_every may change.")
        load_train_state(self.run_dir / "train_state", self.model, optimizer)
        self.step, self.best_val, self.best_step = int(meta["step"]), float(meta["best_val"]), int(meta["best_step"])
        self.elapsed_s, self.fitted_extra = float(meta["elapsed_s"]), bool(meta.get("fitted_extra"))
        self.log(f"resuming {self.family} in {self.run_dir} at step {self.step}")

    def _save(self, optimizer, train_loss: float) -> float:
        """Validate, then write best.* (if better), last.* and train_state.* (rank 0); returns val loss."""
        if not self.rank0:
            return float("nan")
        val = evaluate_loss(self.model, self.val_ds, self.dev, self.config.batch_size)
        extra = {**self.provenance, "step": self.step, "train_loss": train_loss, "val_loss": val}
        if getattr(self.model, "fit_report", None) is not None:  # what fit_extra decided (e.g. the EKF kept its start noise)
            extra["fit_report"] = self.model.fit_report
        # NaN never wins; until a finite validation loss is seen, the best checkpoint is the last one.
        if self.val_ds is None or not math.isfinite(self.best_val) or (math.isfinite(val) and val < self.best_val):
            self.best_val, self.best_step = (val if math.isfinite(val) else math.inf), self.step
            save_checkpoint(self.model, self.run_dir / "best", extra)
        save_checkpoint(self.model, self.run_dir / "last", extra)
        state = {"family": self.family, "config": config_to_dict(self.config), "step": self.step, "best_val": self.best_val,
                 "best_step": self.best_step, "elapsed_s": self.elapsed_s, "fitted_extra": self.fitted_extra, **self.provenance}
        save_train_state(self.run_dir / "train_state", self.model, optimizer, state)
        return val

    def _fit_extra(self, model) -> None:
        """`model.fit_extra` on the training episodes, with the validation episodes where its signature takes them."""
        import inspect

        takes_val = "val_dataset" in inspect.signature(model.fit_extra).parameters  # families written before it was added
        model.fit_extra(self.train_ds, log=self.log, **({"val_dataset": self.val_ds} if takes_val else {}))

    def execute(self, resume: bool, progress: bool, num_workers: int, on_step) -> TrainResult:
        """Run SGD (if the family trains by SGD), then fit_extra, then save and report."""
        t0 = time.perf_counter()
        cfg = self.config
        sgd = self.model.trains_by_sgd and (cfg.steps > 0 or cfg.time_budget_s > 0)
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) if sgd else None
        if resume:
            self._resume(opt)
        metrics = _Metrics(self.run_dir if self.rank0 else None, self.step if resume else 0)
        train_loss, windows, loop_s = float("nan"), 0, 0.0
        try:
            if sgd and not resume:
                self.model.fit_start(self.train_ds, log=self.log)
            if sgd:
                train_loss, windows, loop_s = self._sgd_loop(opt, metrics, progress, num_workers, on_step)
            fitted_now = not self.fitted_extra
            if fitted_now:
                self._fit_extra(self.model)
                self.fitted_extra = True
            if not sgd:
                train_loss = evaluate_loss(self.model, self.train_ds, self.dev, cfg.batch_size)
            val = self._save(opt, train_loss)
            metrics.write({"step": self.step, "time_s": self.elapsed_s, "train_loss": train_loss, "val_loss": val})
        finally:
            metrics.close()
        model, best_val = self.model, self.best_val
        if self.rank0 and self.best_step != self.step:
            model = load_checkpoint(self.run_dir / "best", device=self.dev)
            if fitted_now:  # the best weights predate fit_extra: fit them too, so `best` is a finished model
                self._fit_extra(model)
                best_val = evaluate_loss(model, self.val_ds, self.dev, cfg.batch_size)
                save_checkpoint(model, self.run_dir / "best", {**model.checkpoint_meta.get("extra", {}), "val_loss": best_val})
        self.log(f"{self.family}: {self.step} step(s), train loss {train_loss:.4f}, best val loss {best_val:.4f} at step {self.best_step}")
        return TrainResult(
            run_dir=self.run_dir, model=model.eval(), family=self.family, config=cfg, num_parameters=model.num_parameters(),
            steps=self.step, seconds=time.perf_counter() - t0, windows_per_s=windows * self.info.world / loop_s if loop_s else 0.0,
            train_loss=train_loss, val_loss=best_val if math.isfinite(best_val) else float("nan"), best_step=self.best_step,
            world_size=self.info.world,
        )

    def _sgd_loop(self, opt, metrics: _Metrics, progress: bool, num_workers: int, on_step):
        """Optimizer steps until `steps` or `time_budget_s`; returns (last train loss, windows, seconds)."""
        from tqdm import tqdm

        cfg, info = self.config, self.info
        module = _LossModule(self.model)
        if info.world > 1:
            # conv weight grads of 1-channel frames differ from DDP's buckets only in a size-1 stride
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            module = torch.nn.parallel.DistributedDataParallel(module, device_ids=[self.dev.index] if self.dev.type == "cuda" else None)
        # Windows without a valid target tick teach nothing and would make a batch's loss NaN: leave them out.
        scored = scored_windows(self.rank_ds)
        if not len(scored):
            raise SeqsenseError(f"None of the {len(self.rank_ds)} training window(s) of {self.family} holds a valid tick of target "
                                f"{cfg.target!r} (NaN or missing throughout). Check the target stream, or train on other episodes.")
        seed = cfg.seed * 1009 + info.rank
        if cfg.stateful:  # every row reads its episodes in order; windows without a valid tick still carry the state
            schedule = ConsecutiveWindows(self.rank_ds, cfg.train_rows, seed=seed, start=self.step, stop=cfg.steps or None)
            source = StatefulWindows(self.rank_ds)
            where = lambda step, b: _stateful_window_name(self.rank_ds, schedule.indices(step)[b])  # noqa: E731
        else:
            pool = None if len(scored) == len(self.rank_ds) else scored
            schedule = BatchSchedule(len(scored), cfg.batch_size, seed=seed, start=self.step, stop=cfg.steps or None, pool=pool)
            source = self.rank_ds
            where = lambda step, b: _window_name(self.rank_ds, schedule.indices(step)[b])  # noqa: E731
        loader = torch.utils.data.DataLoader(source, batch_sampler=schedule, collate_fn=_passthrough, num_workers=num_workers)
        state = None  # the carried model state of stateful training
        bar = tqdm(total=cfg.steps or None, initial=self.step, disable=not (progress and self.rank0), file=sys.stderr, unit="step", desc=self.family)
        log_every = max(1, min(cfg.val_every, 25))
        run_sum, run_n, last_loss, windows, loop_s = 0.0, 0, float("nan"), 0, 0.0
        tick = time.perf_counter()
        self.model.train()
        for batch in loader:
            step = self.step
            check_finite(batch, lambda b: where(step, b))
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            batch = {k: v.to(self.dev, non_blocking=True) for k, v in batch.items()}
            if self.rotator is not None:  # training windows only; validation sees the data as recorded
                batch = self.rotator(batch, step, batch.get("state_reset") if cfg.stateful else None)
            if cfg.stateful:
                loss, state = self._stateful_loss(module, batch, state)
            else:
                loss = module(batch)
            if not torch.isfinite(loss):
                raise SeqsenseError(f"The training loss became {loss.item()} at step {step + 1} of {self.family}; lower lr (now {cfg.lr}) or check the data.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            opt.step()
            self.step += 1
            run_sum, run_n, windows = run_sum + loss.item(), run_n + 1, windows + batch["t_ns"].shape[0]
            now = time.perf_counter()
            loop_s, self.elapsed_s, tick = loop_s + now - tick, self.elapsed_s + now - tick, now
            stop = self._out_of_time()
            if self.step % log_every == 0 or stop or self.step == cfg.steps:
                last_loss, run_sum, run_n = run_sum / run_n, 0.0, 0
                rate = windows * info.world / max(loop_s, 1e-9)
                bar.set_postfix(loss=f"{last_loss:.4f}", win_s=f"{rate:.0f}")
                row = {"step": self.step, "time_s": self.elapsed_s, "lr": opt.param_groups[0]["lr"], "train_loss": last_loss, "windows_per_s": rate}
                if self.step % cfg.val_every == 0 and not (stop or self.step == cfg.steps):  # the end saves anyway
                    row["val_loss"] = self._save(opt, last_loss)
                if self.rank0:
                    metrics.write(row)
            bar.update(1)
            if on_step is not None:
                on_step(self.step, loss.item())
            tick = time.perf_counter()
            if stop:
                break
        bar.close()
        return (last_loss if run_n == 0 else run_sum / run_n), windows, loop_s

    def _stateful_loss(self, module, batch: dict, state):
        """(loss, next state, detached) of one stateful batch: rows flagged `state_reset` start from reset."""
        reset = batch.pop("state_reset")
        state = self.model.init_state(int(reset.shape[0])) if state is None else self.model.reset_rows(state, reset)
        loss, nxt = module(batch, state, stateful=True)
        return loss, {k: v.detach() for k, v in nxt.items()}

    def _out_of_time(self) -> bool:
        """True once the time budget is spent (agreed by all ranks)."""
        if not self.config.time_budget_s:
            return False
        stop = torch.tensor([float(self.elapsed_s >= self.config.time_budget_s)], device=self.dev)
        if self.info.world > 1:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        return bool(stop.item())


def _passthrough(batch):
    return batch
