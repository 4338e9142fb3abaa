"""Oracle memory gaps: the best estimator with memory against the best without, from a log's truth.

No learning: where a generated scenario admits it, the generator's ground truth gives both
estimators, and the gap between them is what memory can buy at most (or, for the tracking case, a
near-optimal reference of it). Errors are taken at the target stream's ticks (the study's clock);
MSE is the mean over valid ticks and target fields, pooled over episodes, and the gain is
1 − MSE(memory) / MSE(memoryless) (0 when the memoryless MSE is 0: nothing left to gain).

Kinds (`oracle_kind`):
- `kalman_vs_lmmse` (linear_gaussian, target truth/position or truth/state, vector or frame inputs:
  the frames render the measurement invertibly, so both estimators read it): memory = the stored
  optimal Kalman filter; memoryless = the linear MMSE estimate from the current measurement alone,
  ŷ_k = C m_k + C P_k Hᵀ (H P_k Hᵀ + R)⁻¹ (z_k − H m_k) for a target y = C x, with the state's prior
  mean and covariance m_k = F m_{k−1}, P_k = F P_{k−1} Fᵀ + Q from (x0_mean, P0): P_k = P∞ for the
  stationary models; for the kinematic ones the estimator knows the tick index. Its expected squared
  error is tr(C P Cᵀ − C P Hᵀ S⁻¹ H P Cᵀ).
- `exact_frame` (slideshow with pixel_noise = 0, target truth/position or truth/marker_class): a
  noise-free frame is a function of its slide, whose marker is drawn on top in a colour no clutter
  uses, so one frame gives the marker's place and class exactly: both MSEs are 0 and the gain is 0.
  With pixel noise no estimator is known in closed form (reading the marker becomes a decoder's
  problem, and averaging frames within a slide may pay), so there is no oracle.
- `pf_vs_detection` (tracking, target truth/position, occlusion > 0 or distractor > 0): per-frame
  detections of the visible balls, truth + N(0, σ²) per axis with σ = DETECTION_STD_PX pixels (about a
  good detector's accuracy on the scenario's frames), none while the ball is occluded (the frame shows
  the occluder, so hidden is known) or its frame dropped. Memory = a bootstrap particle filter with
  the scenario's true ball dynamics (`seqsense.scenarios.physics.ball_step`, the OU force in the
  state, the true initial distribution), regularized after resampling. Memoryless = the latest
  frame's detection alone: the detection; the scene's mean position (the mean of the log's truth over
  every episode and tick) while occluded, since the occluder says nothing about where the ball is;
  the midpoint of the two detections while the identical look-alike is shown beside it (both are
  equally likely the target: same physics, the look-alike's position taken as uniform). The filter
  weighs the two the same way, N(z₁; p) + N(z₂; p), and keeps the identity through its dynamics.
  Detection noise and filter use a generator seeded from the log's seed and the episode's name, so
  the numbers are reproducible. Other `distractors` balls differ in colour and are not detected; with
  distractor_similarity = 1 they are not in the truth, so there is no oracle.
Anything else has no oracle (None).
"""

from __future__ import annotations

import os
import zlib

import numpy as np

from seqsense.log import Log, ns_to_seconds, open_log
from seqsense.scenarios.physics import ball_step
from seqsense.scenarios.tracking import SUBSTEPS

DETECTION_STD_PX = 0.5  # std of a simulated detection per axis, in pixels
PARTICLES = 1000
LG_TARGETS = {"truth/position": "optimal/filter_mean", "truth/state": "optimal/filter_state_mean"}
SLIDESHOW_TARGETS = ("truth/position", "truth/marker_class")
DESCRIPTIONS = {
    "kalman_vs_lmmse": "The stored optimal Kalman filter against the best memoryless estimate from the current "
                       "measurement alone (the linear MMSE gain C P Hᵀ (H P Hᵀ + R)⁻¹), both with the true system.",
    "exact_frame": "Every noise-free frame shows its slide's marker exactly, so the best memoryless estimate is "
                   "exact (MSE 0) and memory can add nothing.",
    "pf_vs_detection": "A {n}-particle filter with the scenario's true ball dynamics against the same simulated "
                       "detections (truth + {px:g} px noise, none while occluded{look}) taken one frame at a time "
                       "(the scene's mean position while occluded{mid}).",
}


def oracle_kind(provenance: dict, target: str) -> str | None:
    """The short name of the oracle pair a log with `provenance` admits for `target`, or None."""
    scenario, k = provenance.get("scenario"), provenance.get("knobs") or {}
    if scenario == "linear_gaussian" and target in LG_TARGETS and "system" in provenance:
        return "kalman_vs_lmmse"
    if scenario == "slideshow" and target in SLIDESHOW_TARGETS and k.get("pixel_noise", 0.0) == 0:
        return "exact_frame"
    if scenario == "tracking" and target == "truth/position":
        hidden_twins = k.get("distractors", 0) > 0 and k.get("distractor_similarity", 0.0) >= 1.0
        if (k.get("occlusion", 0.0) > 0 or k.get("distractor", 0.0) > 0) and not hidden_twins:
            return "pf_vs_detection"
    return None


def oracle_gap(log_path: str | os.PathLike, target: str) -> dict | None:
    """The oracle memory gap of the log at `log_path` for `target` from its ground truth, or None.

    Returns {"kind", "description", "mse_memory", "mse_memoryless", "gain",
    "per_episode": [{"episode", "mse_memory", "mse_memoryless"}, ...]}.
    """
    log = open_log(log_path)
    try:
        kind = oracle_kind(log.provenance, target)
        if kind is None:
            return None
        scene_mean = _scene_mean(log, target) if kind == "pf_vs_detection" else None
        per_episode, sums, count = [], np.zeros(2), 0
        for ep in log.episode_names:
            est = episode_estimates(log, ep, target, scene_mean=scene_mean)
            v = est["valid"]
            se = np.stack([((est[key][v] - est["truth"][v]) ** 2).sum() for key in ("memory", "memoryless")])
            n = int(v.sum()) * est["truth"].shape[1]
            mse = se / max(n, 1)
            per_episode.append({"episode": ep, "mse_memory": float(mse[0]), "mse_memoryless": float(mse[1])})
            sums, count = sums + se, count + n
        mse_mem, mse_ml = (float(x) for x in sums / max(count, 1))
        return {
            "kind": kind,
            "description": _description(kind, log.provenance),
            "mse_memory": mse_mem,
            "mse_memoryless": mse_ml,
            "gain": 0.0 if mse_ml == 0 else float(1.0 - mse_mem / mse_ml),
            "per_episode": per_episode,
        }
    finally:
        log.close()


def episode_estimates(log: Log, episode: str, target: str, scene_mean: np.ndarray | None = None) -> dict:
    """Both oracle estimates of one episode at the target's ticks.

    Returns {"t_s" (N,), "truth" (N, D), "memory" (N, D), "memoryless" (N, D), "valid" (N,) bool} and,
    for tracking, "visible" (N,) bool (a detection of the ball at the tick). ValueError if the log's
    scenario and `target` admit no oracle. `scene_mean` (tracking) defaults to the log's.
    """
    kind = oracle_kind(log.provenance, target)
    if kind is None:
        raise ValueError(f"Log '{log.path}': no oracle for scenario {log.provenance.get('scenario')!r} and target "
                         f"{target!r}; see seqsense.evaluate.oracle for the cases that have one.")
    ep = log.episode(episode)
    s = ep.stream(target)
    truth = s.read().astype(np.float64)
    truth = truth.reshape(len(truth), -1)  # (N, D); labels become one field
    out = {"t_s": ns_to_seconds(s.t), "truth": truth, "valid": np.all(np.isfinite(truth), axis=1)}
    if kind == "kalman_vs_lmmse":
        out["memory"] = ep.stream(LG_TARGETS[target]).read().astype(np.float64)
        out["memoryless"] = _lmmse(log.provenance["system"], ep.stream("measurement").read(), target)
    elif kind == "exact_frame":
        out["memory"], out["memoryless"] = truth.copy(), truth.copy()
    else:
        mean = _scene_mean(log, target) if scene_mean is None else np.asarray(scene_mean, np.float64)
        out.update(_tracking(log, ep, truth, mean))
    out["valid"] &= np.all(np.isfinite(out["memory"]) & np.isfinite(out["memoryless"]), axis=1)
    return out


def _description(kind: str, prov: dict) -> str:
    """The report's sentence for `kind` on a log with provenance `prov`."""
    if kind != "pf_vs_detection":
        return DESCRIPTIONS[kind]
    look = prov.get("knobs", {}).get("distractor", 0.0) > 0
    return DESCRIPTIONS[kind].format(
        n=PARTICLES, px=DETECTION_STD_PX, look=", the look-alike detected like the ball" if look else "",
        mid="; the midpoint of two detections" if look else "",
    )


def _lmmse(system: dict, z: np.ndarray, target: str) -> np.ndarray:
    """The linear MMSE estimate (N, D) of the target from each measurement z_k (N, m) alone."""
    F, Q, H, R = (np.asarray(system[key], np.float64) for key in ("F", "Q", "H", "R"))
    m, P = np.asarray(system["x0_mean"], np.float64), np.asarray(system["P0"], np.float64)
    C = H if target == "truth/position" else np.eye(F.shape[0])
    z = np.asarray(z, np.float64).reshape(len(z), -1)
    out = np.empty((len(z), C.shape[0]))
    for k in range(len(z)):
        if k > 0:
            m_next, P_next = F @ m, F @ P @ F.T + Q
            if np.array_equal(m_next, m) and np.allclose(P_next, P, rtol=1e-10, atol=0.0):
                break  # stationary from here on: one gain for the remaining ticks
            m, P = m_next, P_next
        gain = np.linalg.solve(H @ P @ H.T + R, H @ P @ C.T).T  # C P Hᵀ S⁻¹ (S, P symmetric)
        out[k] = C @ m + gain @ (z[k] - H @ m)
    else:
        return out
    out[k:] = C @ m + (z[k:] - H @ m) @ gain.T
    return out


def _scene_mean(log: Log, target: str) -> np.ndarray:
    """The mean of `target` over every tick of every episode of `log`: the scene's mean position."""
    total, n = 0.0, 0
    for ep in log.episodes():
        y = ep.stream(target).read().astype(np.float64)
        total, n = total + y.sum(axis=0), n + len(y)
    return total / max(n, 1)


def _tracking(log: Log, ep, truth: np.ndarray, scene_mean: np.ndarray) -> dict:
    """Particle filter and detections-alone estimates of the ball's position on one tracking episode."""
    prov, k = log.provenance, log.provenance["knobs"]
    n, rate = len(truth), float(k["rate_hz"])
    sigma = DETECTION_STD_PX / k["image_size"]
    seed = np.random.SeedSequence([int(prov.get("seed", 0)), zlib.crc32(ep.name.encode())])
    rng = np.random.default_rng(seed)
    kept = np.zeros(n, bool)
    kept[np.clip(np.round(ns_to_seconds(ep.stream("camera").t) * rate).astype(int), 0, n - 1)] = True
    visible = kept & (ep.stream("truth/occluded").read() == 0)
    z_ball = truth + sigma * rng.standard_normal(truth.shape)  # (N, 2)
    look = np.zeros(n, bool)
    z_look = np.zeros_like(truth)
    if ep.has_stream("truth/distractor"):
        look = kept & (ep.stream("truth/distractor").read() == 1)
        z_look = ep.stream("truth/distractor_position").read().astype(np.float64)
        z_look = z_look + sigma * rng.standard_normal(z_look.shape)
    pair = visible & look  # two identical detections: which is the ball is unknown

    frame_est = np.where(visible[:, None], z_ball, scene_mean)  # (N, 2) the frame's own estimate
    frame_est[pair] = 0.5 * (z_ball[pair] + z_look[pair])
    latest = np.maximum.accumulate(np.where(kept, np.arange(n), 0))  # the latest frame at each tick
    memoryless = frame_est[latest]

    physics = dict(radius=k["radius"], gravity=k["gravity"], drag=k["drag"], restitution=k["restitution"])
    memory = particle_filter(rng, n, 1.0 / (rate * SUBSTEPS), SUBSTEPS, physics, k["force"], k["force_tau_s"],
                             k["speed"], sigma, visible, z_ball, pair, z_look)
    return {"memory": memory, "memoryless": memoryless, "visible": visible}


def particle_filter(
    rng: np.random.Generator, n_ticks: int, dt: float, substeps: int, physics: dict, force: float,
    force_tau_s: float, speed: float, sigma: float, visible: np.ndarray, z: np.ndarray, pair: np.ndarray,
    z_other: np.ndarray, particles: int = PARTICLES,
) -> np.ndarray:
    """Filtered mean positions (N, 2) of a ball seen through detections `z` at the `visible` ticks.

    The state per particle is (position, velocity, OU force), propagated `substeps` steps of `dt` per
    tick; at a `pair` tick either of (z, z_other) may be the ball. Resampling is systematic when the
    effective sample size drops below half, followed by a Gaussian jitter of each state component
    with the Silverman bandwidth times its spread (a regularized particle filter), which keeps the
    nearly deterministic dynamics from collapsing the cloud onto a few particles.
    """
    r = physics["radius"]
    lo, hi = r, 1.0 - r
    p = rng.uniform(lo, hi, (particles, 2))
    ang = rng.uniform(0.0, 2.0 * np.pi, particles)
    v = speed * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    f = force * rng.standard_normal((particles, 2)) if force > 0 else np.zeros((particles, 2))
    rho = np.exp(-dt / force_tau_s)
    kick = force * np.sqrt(1.0 - rho * rho)
    logw = np.zeros(particles)
    bandwidth = (4.0 / (particles * 8.0)) ** (1.0 / 10.0)  # Silverman for a 6-dimensional state
    inv2s2 = 0.5 / sigma**2

    out = np.empty((n_ticks, 2))
    for t in range(n_ticks):
        if t > 0:
            noise = kick * rng.standard_normal((substeps,) + f.shape) if force > 0 else None  # (S, B, 2)
            for s in range(substeps):
                p, v = ball_step(p, v, f, dt, **physics)
                if noise is not None:
                    f = rho * f + noise[s]
        if visible[t]:
            ll = -inv2s2 * ((p - z[t]) ** 2).sum(axis=1)
            if pair[t]:
                ll = np.logaddexp(ll, -inv2s2 * ((p - z_other[t]) ** 2).sum(axis=1))
            logw = logw + ll
            logw -= logw.max()
        w = np.exp(logw)
        w /= w.sum()
        out[t] = w @ p
        if visible[t] and 1.0 / (w @ w) < 0.5 * particles:
            idx = np.minimum(np.searchsorted(np.cumsum(w), (rng.random() + np.arange(particles)) / particles),
                             particles - 1)
            state = np.concatenate([p, v, f], axis=1)  # (B, 6)
            spread = np.sqrt(np.maximum(w @ state**2 - (w @ state) ** 2, 0.0))
            state = state[idx] + bandwidth * spread * rng.standard_normal(state.shape)
            p, v, f = np.clip(state[:, :2], lo, hi), state[:, 2:4], state[:, 4:]
            logw = np.zeros(particles)
    return out
