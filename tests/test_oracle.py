"""Oracle memory gaps from the generator's truth: linear-Gaussian, clean slideshow, occluded tracking."""

from __future__ import annotations

import numpy as np
import pytest

from seqsense.evaluate.oracle import episode_estimates, oracle_gap, oracle_kind
from seqsense.log import open_log
from seqsense.scenarios import generate

KEYS = {"kind", "description", "mse_memory", "mse_memoryless", "gain", "per_episode"}


@pytest.fixture(scope="module")
def occluded(tmp_path_factory):
    """A small occluded tracking log (3 episodes of 8 s at 30 Hz)."""
    d = tmp_path_factory.mktemp("oracle")
    return generate("tracking", d / "occ.h5", episodes=3, seed=1, duration_s=8.0,
                    knobs={"image_size": 16, "occlusion": 0.3})


def test_linear_gaussian_memoryless_mse_is_analytic_and_the_filter_beats_it(tmp_path):
    """Episodes are independent, so per-episode MSEs give the standard error; 4 of them allowed."""
    path = generate("linear_gaussian", tmp_path / "lg.h5", episodes=12, seed=3, duration_s=40.0)
    prov = open_log(path).provenance
    P, H, R = (np.asarray(prov["system"][k]) for k in ("P0", "H", "R"))  # P0 = P∞ (stationary matern32)
    for target, C in (("truth/position", H), ("truth/state", np.eye(len(P)))):
        gap = oracle_gap(path, target)
        assert set(gap) == KEYS and gap["kind"] == "kalman_vs_lmmse" and len(gap["per_episode"]) == 12
        cross = C @ P @ H.T
        analytic = np.trace(C @ P @ C.T - cross @ np.linalg.solve(H @ P @ H.T + R, cross.T)) / len(C)
        ml = np.array([e["mse_memoryless"] for e in gap["per_episode"]])
        assert abs(ml.mean() - analytic) < 4 * ml.std(ddof=1) / np.sqrt(len(ml)), (ml.mean(), analytic)
        assert gap["mse_memory"] < 0.7 * gap["mse_memoryless"] and 0.3 < gap["gain"] < 1.0
    expected = prov["optimal_mean_var_trace"] / H.shape[0]
    assert abs(oracle_gap(path, "truth/position")["mse_memory"] / expected - 1) < 0.1


def test_linear_gaussian_frames_have_the_same_oracle(tmp_path):
    kn = {"frames": True, "image_size": 16}
    path = generate("linear_gaussian", tmp_path / "f.h5", episodes=2, seed=0, duration_s=3.0, knobs=kn)
    vec = generate("linear_gaussian", tmp_path / "v.h5", episodes=2, seed=0, duration_s=3.0)
    a, b = oracle_gap(path, "truth/position"), oracle_gap(vec, "truth/position")
    assert a["kind"] == "kalman_vs_lmmse" and a["gain"] == b["gain"] > 0


def test_clean_slideshow_oracle_is_exact_and_noise_has_none(tmp_path):
    path = generate("slideshow", tmp_path / "s.h5", episodes=2, seed=0, duration_s=2.0, knobs={"image_size": 16})
    for target in ("truth/position", "truth/marker_class"):
        gap = oracle_gap(path, target)
        assert gap["kind"] == "exact_frame" and gap["gain"] == 0.0
        assert gap["mse_memory"] == gap["mse_memoryless"] == 0.0 and len(gap["per_episode"]) == 2
    noisy = generate("slideshow", tmp_path / "n.h5", episodes=1, seed=0, duration_s=1.0,
                     knobs={"image_size": 16, "pixel_noise": 0.1})
    assert oracle_gap(noisy, "truth/position") is None


def test_particle_filter_holds_the_ball_through_occlusions(occluded):
    log = open_log(occluded)
    scene_mean = np.concatenate([ep.stream("truth/position").read() for ep in log.episodes()]).mean(axis=0)
    se = {"memory": [[], []], "memoryless": [[], []]}  # [visible, occluded] squared errors
    per_episode = []
    for name in log.episode_names:
        est = episode_estimates(log, name, "truth/position")
        per_episode.append({"episode": name, **{f"mse_{k}": float(((est[k] - est["truth"]) ** 2).mean()) for k in se}})
        hidden = log.episode(name).stream("truth/occluded").read() == 1
        np.testing.assert_allclose(est["memoryless"][hidden], np.broadcast_to(scene_mean, (hidden.sum(), 2)), atol=1e-6)
        assert np.array_equal(est["visible"], ~hidden)  # no dropped frames here
        for key in se:
            err = ((est[key] - est["truth"]) ** 2).mean(axis=1)
            se[key][0].append(err[~hidden])
            se[key][1].append(err[hidden])
    vis, occ = ({k: np.concatenate(se[k][i]).mean() for k in se} for i in (0, 1))
    assert occ["memory"] < 0.4 * occ["memoryless"], occ
    assert vis["memory"] <= vis["memoryless"], vis
    gap = oracle_gap(occluded, "truth/position")
    assert set(gap) == KEYS and gap["kind"] == "pf_vs_detection" and gap["gain"] > 0.5
    assert "particle filter" in gap["description"]
    assert gap["per_episode"] == per_episode  # seeded from the log and episode: reproducible


def test_particle_filter_keeps_identity_against_the_look_alike(tmp_path):
    path = generate("tracking", tmp_path / "d.h5", episodes=2, seed=2, duration_s=8.0,
                    knobs={"image_size": 16, "distractor": 0.5})
    log = open_log(path)
    pf, mid = [], []
    for name in log.episode_names:
        est = episode_estimates(log, name, "truth/position")
        both = log.episode(name).stream("truth/distractor").read() == 1
        seen_alone = np.logical_or.accumulate(est["visible"] & ~both)  # identity established once
        pf.append(((est["memory"] - est["truth"]) ** 2)[both & seen_alone])
        mid.append(((est["memoryless"] - est["truth"]) ** 2)[both & seen_alone])
    assert np.concatenate(pf).mean() < 0.3 * np.concatenate(mid).mean()
    gap = oracle_gap(path, "truth/position")
    assert gap["gain"] > 0.2 and "look-alike" in gap["description"]  # both balls shown at the start: ambiguous


def test_cases_without_an_oracle(tmp_path):
    def prov(scenario, **knobs):
        return {"scenario": scenario, "knobs": knobs, "system": {}}

    assert oracle_kind(prov("tracking", occlusion=0.0), "truth/position") is None  # every frame shows the ball
    assert oracle_kind(prov("tracking", occlusion=0.3), "truth/velocity") is None
    assert oracle_kind(prov("tracking", occlusion=0.3, distractors=2, distractor_similarity=1.0), "truth/position") is None
    assert oracle_kind(prov("tracking", occlusion=0.3, distractors=2), "truth/position") == "pf_vs_detection"
    assert oracle_kind(prov("tracking", distractor=0.2), "truth/position") == "pf_vs_detection"
    assert oracle_kind(prov("linear_gaussian"), "measurement") is None
    assert oracle_kind(prov("multirate", occlusion=0.3), "truth/position") is None
    assert oracle_kind(prov("imu_motion"), "truth/gravity_body") is None
    assert oracle_kind({}, "truth/position") is None  # a recorded log
    clean = generate("tracking", tmp_path / "c.h5", episodes=1, seed=0, duration_s=1.0, knobs={"image_size": 16})
    assert oracle_gap(clean, "truth/position") is None
    with pytest.raises(ValueError, match="no oracle"):
        episode_estimates(open_log(clean), "ep_000", "truth/position")
