"""Physics, sensor and rendering sanity of the generated scenarios, and the optimal-filter statistics."""

from __future__ import annotations

import numpy as np
import pytest

from seqsense.log import ns_to_seconds, open_log
from seqsense.scenarios import generate, make_scenario
from seqsense.scenarios.physics import ball_step, ou_process, simulate_ball
from seqsense.scenarios.rotation import canonical, integrate_body_rates, rotate_inverse
from seqsense.scenarios.tracking import TARGET_COLOR


def read(ep, name):
    """(t in seconds, data) of a stream."""
    s = ep.stream(name)
    return ns_to_seconds(s.t), s.read()


def ball(**kw):
    args = dict(radius=0.05, gravity=1.0, drag=0.0, restitution=1.0, force=0.0, force_tau_s=0.5, speed=1.2)
    args.update(kw)
    return simulate_ball(np.random.default_rng(0), 20_000, 1.0 / 240, **args)


def test_ball_conserves_energy_with_elastic_bounces_and_stays_in_bounds():
    P, V, bounces = ball()
    assert bounces > 20
    energy = 0.5 * (V**2).sum(axis=1) - 1.0 * P[:, 1]  # y points down, so potential = −g·y
    assert np.abs(energy - energy[0]).max() < 1e-9 * max(1.0, abs(energy[0]))
    assert P.min() >= 0.05 - 1e-12 and P.max() <= 0.95 + 1e-12


def test_ball_without_gravity_keeps_speed_and_inelastic_bounces_lose_energy():
    _, V, _ = ball(gravity=0.0)
    speed = np.linalg.norm(V, axis=1)
    assert np.allclose(speed, speed[0], rtol=1e-12)
    P, V, bounces = ball(restitution=0.7)
    energy = 0.5 * (V**2).sum(axis=1) - P[:, 1]
    assert bounces > 0 and np.all(np.diff(energy) <= 1e-9)


def test_tracking_truth_in_bounds_future_is_shifted_position_and_ball_drawn_at_truth(tmp_path):
    kn = {"image_size": 32, "pixel_noise": 0.0, "horizon_s": 0.5, "rate_hz": 30.0, "radius": 0.08}
    ep = open_log(generate("tracking", tmp_path / "t.h5", episodes=1, duration_s=4.0, knobs=kn)).episode("ep_000")
    _, pos = read(ep, "truth/position")
    assert pos.min() >= 0.08 - 1e-6 and pos.max() <= 0.92 + 1e-6
    _, fut = read(ep, "truth/future_position")
    np.testing.assert_allclose(fut[:-15], pos[15:], atol=1e-5)  # 0.5 s = 15 frames
    frames = ep.stream("camera").read()
    ij = np.clip((pos * 32).astype(int), 0, 31)
    centre = frames[np.arange(len(frames)), ij[:, 1], ij[:, 0]] / 255.0  # (N, 3) pixel under the ball centre
    np.testing.assert_allclose(centre, np.broadcast_to(TARGET_COLOR, centre.shape), atol=0.02)


def test_occlusion_fraction_matches_knob_and_hidden_ball_is_not_drawn(tmp_path):
    kn = {"image_size": 32, "rate_hz": 10.0, "occlusion": 0.3, "occlusion_duration_s": 0.5, "pixel_noise": 0.0}
    log = open_log(generate("tracking", tmp_path / "o.h5", episodes=4, duration_s=150.0, knobs=kn))
    occ = np.concatenate([read(e, "truth/occluded")[1] for e in log.episodes()])
    # renewal process: ~1,400 hidden/visible cycles in 600 s, so the fraction's std is about 0.01
    assert abs(occ.mean() - 0.3) < 0.04
    ep = log.episode("ep_000")
    frames = ep.stream("camera").read().astype(float) / 255.0
    hidden = read(ep, "truth/occluded")[1] == 1
    target_like = np.linalg.norm(frames - TARGET_COLOR, axis=-1).min(axis=(1, 2)) < 0.1  # (N,)
    assert target_like[~hidden].mean() > 0.99 and not target_like[hidden].any()


def test_batched_ball_step_is_the_simulator_step():
    kw = dict(radius=0.06, gravity=1.0, drag=0.1, restitution=0.9)
    n, dt = 4000, 1.0 / 120
    P, V, bounces = simulate_ball(np.random.default_rng(5), n, dt, force=1.0, force_tau_s=0.5, speed=0.5, **kw)
    rng = np.random.default_rng(5)  # the simulator's draws, in its order
    p = rng.uniform(0.06, 0.94, 2)[None]
    ang = rng.uniform(0.0, 2.0 * np.pi)
    v = 0.5 * np.array([[np.cos(ang), np.sin(ang)]])
    f = ou_process(rng, n, 2, dt, 0.5, 1.0)
    err = 0.0
    for k in range(n):
        p, v = ball_step(p, v, f[k][None], dt, **kw)
        err = max(err, np.abs(p[0] - P[k + 1]).max(), np.abs(v[0] - V[k + 1]).max())
    assert bounces > 20 and err < 1e-12


def test_occluder_box_says_nothing_about_the_hidden_ball(tmp_path):
    """On hidden frames the box's place is uncorrelated with the ball's (~400 hidden intervals: se ~0.05)."""
    kn = {"image_size": 16, "rate_hz": 10.0, "occlusion": 0.3, "occlusion_duration_s": 0.5, "pixel_noise": 0.0}
    log = open_log(generate("tracking", tmp_path / "b.h5", episodes=40, seed=2, duration_s=20.0, knobs=kn))
    c = (np.arange(16) + 0.5) / 16
    box, pos = [], []
    for ep in log.episodes():
        hidden = read(ep, "truth/occluded")[1] == 1
        frames = ep.stream("camera").read().astype(float) / 255.0
        bg = np.median(frames[~hidden].reshape(-1, 3), axis=0)  # the plain background (the ball is small)
        m = np.abs(frames[hidden] - bg).max(axis=-1) > 0.1  # (M, H, W) the box
        w = m.sum(axis=(1, 2))
        box.append(np.stack([(m.sum(axis=1) * c).sum(axis=1) / w, (m.sum(axis=2) * c).sum(axis=1) / w], axis=1))
        pos.append(read(ep, "truth/position")[1][hidden])
    box, pos = np.concatenate(box), np.concatenate(pos)
    assert len(box) > 1500
    corr = np.corrcoef(np.hstack([box, pos]).T)[:2, 2:]  # (box x, y) × (ball x, y); a box around the path gives ~0.9
    assert np.abs(corr).max() < 0.2, corr


def test_look_alike_is_drawn_exactly_while_its_label_is_on(tmp_path):
    kn = {"image_size": 32, "pixel_noise": 0.0, "distractor": 0.4, "distractor_duration_s": 0.5, "occlusion": 0.3}
    log = open_log(generate("tracking", tmp_path / "l.h5", episodes=4, duration_s=30.0, knobs=kn))
    shown, hits_on, hits_off, hidden_on = [], [], [], []
    for ep in log.episodes():
        on = read(ep, "truth/distractor")[1] == 1
        hid = read(ep, "truth/occluded")[1] == 1
        look, ball = read(ep, "truth/distractor_position")[1], read(ep, "truth/position")[1]
        frames = ep.stream("camera").read()
        ij = np.clip((look * 32).astype(int), 0, 31)
        centre = frames[np.arange(len(frames)), ij[:, 1], ij[:, 0]] / 255.0
        is_ball = np.abs(centre - TARGET_COLOR).max(axis=1) < 0.02
        apart = hid | (np.linalg.norm(look - ball, axis=1) > 0.2)  # the ball itself is not under the look-alike
        shown.append(on)
        hits_on.append(is_ball[on])
        hits_off.append(is_ball[~on & apart])
        hidden_on.append(is_ball[on & hid])
    assert abs(np.concatenate(shown).mean() - 0.4) < 0.08
    assert np.concatenate(hits_on).all() and not np.concatenate(hits_off).any()
    assert len(np.concatenate(hidden_on)) > 50  # shown while the ball is occluded too: the detector's trap


def test_dropped_frames_and_jitter(tmp_path):
    kn = {"image_size": 16, "rate_hz": 20.0, "drop_prob": 0.3, "timestamp_jitter_s": 0.01}
    ep = open_log(generate("tracking", tmp_path / "d.h5", episodes=1, duration_s=50.0, knobs=kn)).episode("ep_000")
    cam = ep.stream("camera")
    n_truth = len(ep.stream("truth/position"))
    assert abs(len(cam) / n_truth - 0.7) < 0.05
    t = ns_to_seconds(cam.t)
    assert np.all(np.diff(t) > 0)
    err = t - np.round(t * 20) / 20  # stamp error relative to the nominal tick
    assert np.abs(err).max() <= 0.45 / 20 + 1e-9 and 0.005 < err.std() < 0.0105


def test_slideshow_frames_static_within_slides_and_cuts_match(tmp_path):
    kn = {"image_size": 32, "hold_min_s": 0.3, "hold_max_s": 0.8}
    ep = open_log(generate("slideshow", tmp_path / "s.h5", episodes=1, duration_s=5.0, knobs=kn)).episode("ep_000")
    frames = ep.stream("camera").read()
    _, slide = read(ep, "truth/slide")
    same = slide[1:] == slide[:-1]
    identical = np.all(frames[1:] == frames[:-1], axis=(1, 2, 3))
    assert np.array_equal(identical, same)
    cut_t, cut_code = read(ep, "truth/cut")
    t, _ = read(ep, "truth/slide")
    np.testing.assert_allclose(cut_t, t[np.r_[True, ~same]])
    assert np.array_equal(cut_code, np.unique(slide))
    _, pos = read(ep, "truth/position")
    ij = (pos * 32).astype(int)
    centre = frames[np.arange(len(frames)), ij[:, 1], ij[:, 0]] / 255.0
    assert np.mean(np.abs(centre - [1.0, 0.9, 0.1]).max(axis=1) < 0.05) > 0.9  # marker centre (the cross's too)


def quiet_imu(**extra):
    zero = {k: 0.0 for k in ("gyro_noise_density", "gyro_bias_std", "gyro_bias_walk", "accel_noise_density",
                             "accel_bias_std", "accel_bias_walk")}
    return {**zero, **extra}


def test_noise_free_gyro_integrates_to_truth_orientation(tmp_path):
    kn = quiet_imu(mag_noise_std=0.0, mag_bias_std=0.0, truth_decimation=1, rotation_rate=2.0)
    ep = open_log(generate("imu_motion", tmp_path / "i.h5", episodes=1, duration_s=10.0, knobs=kn)).episode("ep_000")
    _, gyro = read(ep, "gyro")
    _, q = read(ep, "truth/orientation")
    q_int = canonical(integrate_body_rates(q[0].astype(np.float64), gyro[:-1].astype(np.float64), 1.0 / 200))
    assert np.abs(q_int - q).max() < 1e-4
    _, g_body = read(ep, "truth/gravity_body")
    np.testing.assert_allclose(g_body, rotate_inverse(q.astype(np.float64), np.array([0.0, 0.0, -1.0])), atol=1e-5)
    _, mag = read(ep, "mag")
    np.testing.assert_allclose(np.linalg.norm(mag, axis=1), 50.0, rtol=1e-5)  # |Earth field| in every attitude


def test_imu_noise_matches_the_declared_densities(tmp_path):
    clean = open_log(generate("imu_motion", tmp_path / "c.h5", episodes=1, duration_s=30.0, knobs=quiet_imu())).episode("ep_000")
    noisy = open_log(generate("imu_motion", tmp_path / "n.h5", episodes=1, duration_s=30.0, knobs={})).episode("ep_000")
    rate = 200.0
    for stream, density in (("gyro", 1.7e-4), ("accel", 2.0e-3)):
        err = read(noisy, stream)[1].astype(np.float64) - read(clean, stream)[1]
        white = np.diff(err, axis=0) / np.sqrt(2.0)  # differencing removes the slowly varying bias
        np.testing.assert_allclose(white.std(axis=0), density * np.sqrt(rate), rtol=0.1)


def test_multirate_imu_agrees_with_truth_motion(tmp_path):
    kn = {"image_size": 16, **quiet_imu()}
    ep = open_log(generate("multirate", tmp_path / "m.h5", episodes=1, duration_s=5.0, knobs=kn)).episode("ep_000")
    t_tr, pos = read(ep, "truth/position")
    _, heading = read(ep, "truth/heading")
    t_imu, acc = read(ep, "accel")
    _, gyro = read(ep, "gyro")
    dt = 0.01
    acc_fd = (pos[2:] - 2 * pos[1:-1] + pos[:-2]) / dt**2  # (N−2, 2) world acceleration at the truth ticks
    k = np.searchsorted(t_imu, t_tr[1:-1])
    c, s = heading[1:-1, 0], heading[1:-1, 1]
    ab = acc[k].astype(np.float64)
    acc_world = np.stack([c * ab[:, 0] - s * ab[:, 1], s * ab[:, 0] + c * ab[:, 1]], axis=1)
    np.testing.assert_allclose(acc_world, acc_fd, atol=0.02)
    np.testing.assert_allclose(acc[:, 2], -9.80665, atol=1e-5)  # z down: at rest the accel reads −g
    yaw = np.unwrap(np.arctan2(heading[:, 1], heading[:, 0]))
    yaw_int = yaw[0] + np.concatenate([[0.0], np.cumsum(gyro[:-1:2, 2] * 0.005 + gyro[1::2, 2] * 0.005)])[: len(yaw)]
    assert np.abs(yaw_int - yaw).max() < 0.02


@pytest.mark.parametrize("dynamics", ["matern32", "constant_velocity", "constant_acceleration", "random_stable"])
def test_optimal_filter_mse_matches_predicted_variance(dynamics):
    """Monte Carlo test: E||x̂ − x||² = tr(H P Hᵀ) for the true-parameter Kalman filter.

    Episodes are independent, so the per-episode time-averaged squared error has a sample mean
    whose standard error is its sample std / √M; the test allows 4 standard errors (a false
    failure about once in 16,000 runs) and also checks the full-state NEES ≈ n and that the RTS
    smoother is no worse than the filter.
    """
    sc = make_scenario("linear_gaussian", {"dynamics": dynamics, "rate_hz": 20.0}, seed=11, duration_s=3.0)
    M = 300
    err, pred, nees, err_s = [], [], [], []
    for i in range(M):
        data = {s.name: s.data.astype(np.float64) for s in sc.episode(i, np.random.default_rng([11, i])).streams}
        e = data["optimal/filter_mean"] - data["truth/position"]
        err.append((e**2).sum(axis=1).mean())
        pred.append(data["optimal/filter_var"].sum(axis=1).mean())
        err_s.append(((data["optimal/smoother_mean"] - data["truth/position"]) ** 2).sum(axis=1).mean())
        n = data["truth/state"].shape[1]
        ex = data["optimal/filter_state_mean"] - data["truth/state"]
        P = data["optimal/filter_state_cov"].reshape(-1, n, n)
        nees.append(np.einsum("ti,tij,tj->t", ex, np.linalg.inv(P), ex).mean())
    err, pred = np.array(err), np.array(pred)
    se = err.std(ddof=1) / np.sqrt(M)
    assert abs(err.mean() - pred.mean()) < 4 * se, (err.mean(), pred.mean(), se)
    assert abs(np.mean(nees) - n) < 4 * np.std(nees, ddof=1) / np.sqrt(M)
    assert np.mean(err_s) < err.mean()


def test_linear_gaussian_frames_carry_the_measurement(tmp_path):
    kn = {"frames": True, "image_size": 32, "blob_sigma_px": 1.5}
    log = open_log(generate("linear_gaussian", tmp_path / "f.h5", episodes=1, duration_s=3.0, knobs=kn))
    ep, render = log.episode("ep_000"), log.provenance["render"]
    frames = ep.stream("camera").read()[..., 0].astype(np.float64)  # (N, H, W)
    _, y = read(ep, "measurement")
    c = (np.arange(32) + 0.5) / 32
    w = frames.sum(axis=(1, 2))
    u = np.stack([(frames.sum(axis=1) * c).sum(axis=1) / w, (frames.sum(axis=2) * c).sum(axis=1) / w], axis=1)
    y_back = (u - render["center"]) / render["scale"]
    px = 1.0 / (32 * render["scale"])  # one pixel in measurement units
    assert np.abs(y_back - y).max() < 0.05 * px
