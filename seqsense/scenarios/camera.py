"""Camera imperfections shared by the frame scenarios: knobs, frame timing, drops, jitter, occlusion.

Timing: frame k is exposed at the nominal time t_k = k / rate_hz (the scene shown is the scene at
t_k, averaged over the exposure when there is motion blur) and stamped s_k = t_k + ε_k with
ε_k ~ N(0, σ_j²) clipped to ±0.45 of a period, so stamps never go backwards. Dropped frames
(independently with probability `drop_prob`, never frame 0) are absent from the `camera` stream;
the truth streams keep every nominal tick.

Occlusion: an alternating renewal process of hidden and visible intervals, hidden lengths
~ Exp(mean D) and visible lengths ~ Exp(mean D·(1 − f)/f), starting hidden with probability f, so
the long-run hidden fraction is f = `occlusion` and the mean hidden interval is D. While hidden the
object is not drawn and one grey box per interval is drawn at a size and place drawn independently of
the object's path (`occluder_boxes`). Why there: a hidden frame is then a function of the
background, the box, the other objects and the pixel noise only, all independent of the path, and the
hidden intervals are independent of the path too, so p(position | frame, hidden) = p(position): the
best memoryless estimate on a hidden tick is the scene's prior mean, and only memory can do better. A
box drawn around the hidden path (or fixed regions the object passes behind) would tell a memoryless
model where the object is: behind the box.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from seqsense.scenarios.base import Knob


def camera_knobs(image_size: int = 64, rate_hz: float = 30.0, rate_range=(5.0, 240.0)) -> tuple[Knob, ...]:
    """The knobs every camera scenario shares, with scenario-specific defaults."""
    return (
        Knob("image_size", int, image_size, "frame height and width in pixels", 16, 256),
        Knob("rate_hz", float, rate_hz, "camera frame rate", *rate_range),
        Knob("pixel_noise", float, 0.02, "std of Gaussian pixel noise, in intensity units (1 = full range)", 0.0, 1.0),
        Knob("motion_blur", float, 0.0, "exposure time as a fraction of the frame period (0 = sharp)", 0.0, 1.0),
        Knob("drop_prob", float, 0.0, "probability that a frame is dropped (absent from the camera stream)", 0.0, 0.9),
        Knob("timestamp_jitter_s", float, 0.0, "std of the error of frame timestamps (clipped to ±0.45 period)", 0.0, 0.1),
    )


@dataclasses.dataclass
class FrameTiming:
    """Nominal frame times, which frames survive, and their stamps."""

    t_s: np.ndarray  # (N,) nominal exposure times of every frame
    kept: np.ndarray  # (K,) indices of the frames written to the camera stream
    stamp_s: np.ndarray  # (K,) stamps of the kept frames


def frame_timing(rng: np.random.Generator, duration_s: float, rate_hz: float, drop_prob: float, jitter_s: float) -> FrameTiming:
    """Nominal times, surviving frames and stamps of a camera running `duration_s` at `rate_hz`."""
    n = max(2, int(round(duration_s * rate_hz)))
    t = np.arange(n) / rate_hz
    keep = rng.random(n) >= drop_prob
    keep[0] = True
    kept = np.flatnonzero(keep)
    eps = rng.standard_normal(len(kept)) * jitter_s
    lim = 0.45 / rate_hz
    stamps = t[kept] + np.clip(eps, -lim, lim)
    stamps = np.maximum(stamps, 0.0)
    return FrameTiming(t, kept, stamps)


def occlusion_intervals(rng: np.random.Generator, duration_s: float, fraction: float, mean_hidden_s: float) -> np.ndarray:
    """Hidden intervals (M, 2) [start, end) in seconds covering about `fraction` of [0, duration_s]."""
    if fraction <= 0:
        return np.zeros((0, 2))
    mean_visible = mean_hidden_s * (1.0 - fraction) / fraction
    hidden = rng.random() < fraction
    t, out = 0.0, []
    while t < duration_s:
        length = rng.exponential(mean_hidden_s if hidden else mean_visible)
        if hidden:
            out.append((t, t + length))
        t += length
        hidden = not hidden
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def interval_index(intervals: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each time in `t`, the index of the interval holding it, or −1."""
    if len(intervals) == 0:
        return np.full(len(t), -1)
    j = np.searchsorted(intervals[:, 0], t, side="right") - 1
    inside = (j >= 0) & (t < intervals[np.maximum(j, 0), 1])
    return np.where(inside, j, -1)


def blur_offsets(motion_blur: float, rate_hz: float, samples: int = 5) -> np.ndarray:
    """Sub-exposure time offsets (S,) centred on the frame time; a single 0 when there is no blur."""
    if motion_blur <= 0:
        return np.zeros(1)
    exposure = motion_blur / rate_hz
    return (np.arange(samples) + 0.5) / samples * exposure - 0.5 * exposure


def occluder_boxes(rng: np.random.Generator, count: int, radius: float) -> np.ndarray:
    """`count` boxes (x0, y0, x1, y1, r, g, b), one per hidden interval, placed independently of any path.

    Each side is U[2r + 0.05, 2r + 0.3] (large enough to hide an object of radius r) and the box is
    uniformly placed inside the image; the grey level is drawn per box. No draw when `count` is 0.
    """
    boxes = np.zeros((count, 7), np.float32)
    if count == 0:
        return boxes
    side = np.minimum(0.9, 2.0 * radius + rng.uniform(0.05, 0.3, (count, 2)))  # (M, 2) width, height
    lo = rng.uniform(0.0, 1.0, (count, 2)) * (1.0 - side)
    boxes[:, :2], boxes[:, 2:4] = lo, lo + side
    boxes[:, 4:] = rng.uniform(0.45, 0.6, (count, 1)) + rng.uniform(-0.03, 0.03, (count, 3))
    return boxes
