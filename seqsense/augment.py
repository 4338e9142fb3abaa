"""Rotation augmentation for sensor-frame vectors: the same random rotation of inputs and target.

Shape letters: B windows (or episode rows in stateful training), T ticks, K packed samples.

A gravity direction in the body frame, an accelerometer and a gyro reading all turn together when
the sensor is mounted (or held) differently: for any rotation R, (R a, R ω) is what the sensor would
have read in the orientation in which gravity points along R g. With few recordings a learned model
sees only the orientations they visit and fits those; turning every training window by a uniform
random rotation teaches it what does not depend on orientation (the accelerometer's direction, the
integration of the gyro) and is the standard augmentation of learned inertial filters.

`ModelConfig.rotate_augment` names the 3-vector slices of input streams to turn ("imu[0:3]",
"imu[3:6]", or a whole 3-field stream "gyro"); the target (a 3-D vector in the same frame) turns
with them. One rotation per training window, or, in stateful training, per episode row: drawn anew
when the row starts an episode, so a carried state always sees one consistent frame. Draws come
from a generator seeded by the run's seed and the step (the same run draws the same rotations).
Validation and evaluation never turn anything.

The normalization of a turned slice is made isotropic (`isotropic_normalization`): mean 0 and, for
each of its three fields, the RMS component E|x|²/3 of the training data, which is what uniformly
turned data has; otherwise an axis that barely moved in the recordings (small std) would blow up
the turned values it is divided by.
"""

from __future__ import annotations

import numpy as np
import torch

from seqsense.config import STREAM_SLICE, parse_stream_slice
from seqsense.errors import ConfigError


def parse_slices(specs, inputs, streams, target: str, target_info) -> list[tuple[str, slice]]:
    """(stream, field slice) of every `rotate_augment` entry; ConfigError naming what does not fit."""
    out = []
    for spec in specs:
        name, part = parse_stream_slice(spec) if STREAM_SLICE.match(spec) else (None, None)
        if name not in inputs:
            raise ConfigError(f"rotate_augment: {spec!r} is not an input stream or 'stream[i:j]' slice; inputs: {list(inputs)}.")
        info = streams[name]
        size = int(np.prod(info.shape) or 1)
        part = part or slice(0, size)
        if info.kind != "vector" or len(info.shape) != 1 or len(range(size)[part]) != 3:
            raise ConfigError(f"rotate_augment: {spec!r} must name 3 values of a vector stream; {name!r} is a "
                              f"{info.kind} stream of shape {tuple(info.shape)}.")
        out.append((name, part))
    if out and (target_info.kind != "vector" or tuple(target_info.shape) != (3,)):
        raise ConfigError(f"rotate_augment turns the target with the inputs, so it must be a 3-D vector in the sensor's frame "
                          f"(e.g. truth/gravity_body); {target!r} is a {target_info.kind} of shape {tuple(target_info.shape)}.")
    return out


def isotropic_normalization(normalization: dict, slices: list[tuple[str, slice]]) -> dict:
    """`normalization` with every turned slice (and the target) at mean 0 and std sqrt(E|x|²/3)."""
    out = {k: {kk: list(vv) for kk, vv in v.items()} for k, v in normalization.items()}

    def iso(key: str, part: slice) -> None:
        mean, std = np.asarray(out[key]["mean"], float), np.asarray(out[key]["std"], float)
        rms = float(np.sqrt(np.mean(std[part] ** 2 + mean[part] ** 2)))
        mean[part], std[part] = 0.0, max(rms, 1e-6)
        out[key]["mean"], out[key]["std"] = mean.tolist(), std.tolist()

    for name, part in slices:
        if name in out:
            iso(name, part)
    if slices and "target" in out:
        iso("target", slice(0, 3))
    return out


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    """n rotation matrices (n, 3, 3), uniform on SO(3) (normalized Gaussian quaternions), float64."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], 1).reshape(n, 3, 3)


def rotate_batch(batch: dict[str, torch.Tensor], R: torch.Tensor, slices: list[tuple[str, slice]]) -> dict[str, torch.Tensor]:
    """A copy of `batch` with every slice (B, T, [K,] ..., 3) and the target (B, T, 3) turned by R (B, 3, 3)."""
    out = dict(batch)

    def turn(x: torch.Tensor) -> torch.Tensor:
        r = R.to(x.dtype).reshape(R.shape[0], *([1] * (x.dim() - 2)), 3, 3)
        return (r @ x.unsqueeze(-1)).squeeze(-1)

    for name, part in slices:
        x = out[name].clone()
        x[..., part] = turn(x[..., part])
        out[name] = x
    out["target"] = turn(out["target"])
    return out


class Rotator:
    """Draws and applies the rotations of one training run (module docstring)."""

    def __init__(self, slices: list[tuple[str, slice]], seed: int):
        self.slices, self.seed = slices, int(seed)
        self.rows: torch.Tensor | None = None  # stateful training: each episode row's rotation

    def _draw(self, n: int, step: int) -> torch.Tensor:
        return random_rotations(n, torch.Generator().manual_seed(self.seed * 1_000_003 + step))

    def __call__(self, batch: dict[str, torch.Tensor], step: int, reset: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`batch` turned: per window, or with `reset` (B,) per row, kept until the row starts again."""
        n = int(batch["target"].shape[0])
        fresh = self._draw(n, step)
        if reset is None:
            R = fresh
        else:
            if self.rows is None or self.rows.shape[0] != n:
                self.rows = fresh
            else:
                self.rows = torch.where(reset.cpu().reshape(n, 1, 1).bool(), fresh, self.rows)
            R = self.rows
        return rotate_batch(batch, R.to(batch["target"].device), self.slices)
