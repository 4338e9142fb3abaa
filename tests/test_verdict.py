"""Tests of the controlled (family against its own twin) gain, its verdicts, and the RMSE-vs-consumer rank agreement."""

import math

import numpy as np
import pytest

from seqsense.evaluate.verdict import (
    FRAME_INDEPENDENT,
    INCONCLUSIVE,
    NEEDS_CONSISTENCY,
    NEEDS_MEMORY,
    PairedGain,
    paired_gain,
    rank_agreement,
    which_pays,
)


def _costs(means, n_seeds=3, n_episodes=20, noise=0.05, seed=0):
    """Per-seed, per-episode costs: a shared episode difficulty times each model's level, plus noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0.5, 1.5, n_episodes)
    return {name: m * difficulty * (1 + noise * rng.standard_normal((n_seeds, n_episodes)))
            for name, m in means.items()}


def test_memory_gain_of_the_best_full_model_against_its_own_twin():
    c = _costs({"gru": 0.5, "gru-twin": 1.0, "kalman": 0.6, "kalman-twin": 0.62})
    full, twin = {"gru": c["gru"], "kalman": c["kalman"]}, {"gru": c["gru-twin"], "kalman": c["kalman-twin"]}
    res = paired_gain(twin, full, pick=full, n_boot=500)
    assert res.family == "gru" and res.verdict == NEEDS_MEMORY
    assert res.gain == pytest.approx(0.5, abs=0.03) and res.ci_low <= res.gain <= res.ci_high
    assert res.per_family["kalman"]["gain"] == pytest.approx(0.03, abs=0.03)
    assert res.as_dict()["verdict"] == NEEDS_MEMORY


def test_equal_twin_and_full_is_frame_independent():
    c = _costs({"gru": 1.0, "gru-twin": 1.0})
    res = paired_gain({"gru": c["gru-twin"]}, {"gru": c["gru"]}, n_boot=500)
    assert res.verdict == FRAME_INDEPENDENT and res.ci_high < 0.05


def test_noisy_small_gain_is_inconclusive_and_seeded():
    c = _costs({"gru": 0.94, "gru-twin": 1.0}, n_seeds=1, n_episodes=6, noise=0.4, seed=3)
    a = paired_gain({"gru": c["gru-twin"]}, {"gru": c["gru"]}, n_boot=400, seed=7)
    b = paired_gain({"gru": c["gru-twin"]}, {"gru": c["gru"]}, n_boot=400, seed=7)
    assert a == b and a.verdict == INCONCLUSIVE


def test_the_pick_is_remade_in_every_replicate():
    # Two families whose full models tie: the picked family flips between replicates, and the CI
    # spans both families' gains instead of the one picked on the full data.
    c = _costs({"a": 0.5, "b": 0.5, "a-twin": 0.6, "b-twin": 1.0}, n_seeds=1, n_episodes=10, noise=0.1, seed=1)
    res = paired_gain({"a": c["a-twin"], "b": c["b-twin"]}, {"a": c["a"], "b": c["b"]}, n_boot=1000)
    assert res.ci_low < res.per_family["a"]["gain"] + 0.05 and res.ci_high > res.per_family["b"]["gain"] - 0.05


@pytest.mark.parametrize("base,treated,match", [
    ({"gru": np.ones((2, 5))}, {"gru": np.ones((3, 5))}, "one shape"),
    ({"gru": [1.0, np.nan]}, {"gru": [1.0, 1.0]}, "non-finite"),
    ({"gru": [1.0]}, {"lstm": [1.0]}, "no family"),
])
def test_bad_inputs(base, treated, match):
    with pytest.raises(ValueError, match=match):
        paired_gain(base, treated)


def _g(verdict):
    return PairedGain(0.0, 0.0, 0.0, verdict, "f", 1.0, 1.0, 0.05, 0.95, 5, {})


def test_which_pays():
    assert which_pays(_g(NEEDS_MEMORY), _g(FRAME_INDEPENDENT), _g(NEEDS_MEMORY)) == NEEDS_MEMORY
    assert which_pays(_g(NEEDS_MEMORY), _g(NEEDS_CONSISTENCY), _g(FRAME_INDEPENDENT)) == NEEDS_CONSISTENCY
    assert which_pays(_g(INCONCLUSIVE), _g(NEEDS_CONSISTENCY), _g(INCONCLUSIVE)) == NEEDS_CONSISTENCY
    assert which_pays(_g(FRAME_INDEPENDENT), _g(FRAME_INDEPENDENT), _g(FRAME_INDEPENDENT)) == FRAME_INDEPENDENT
    assert which_pays(_g(FRAME_INDEPENDENT), _g(INCONCLUSIVE), _g(FRAME_INDEPENDENT)) == INCONCLUSIVE


def test_rank_agreement():
    rmse = {"framewise": 0.10, "gru": 0.12, "kalman": 0.15}
    same = rank_agreement(rmse, {"framewise": 1.0, "gru": 2.0, "kalman": 3.0})
    assert same["kendall_tau"] == pytest.approx(1.0) and same["picks_agree"]
    flipped = rank_agreement(rmse, {"framewise": 3.0, "gru": 2.0, "kalman": 1.0})
    assert flipped["kendall_tau"] == pytest.approx(-1.0)
    assert flipped["rmse_pick"] == "framewise" and flipped["consumer_pick"] == "kalman"
    assert not flipped["picks_agree"]
    two = rank_agreement({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0})
    assert math.isnan(two["p_value"])
    with pytest.raises(ValueError, match="at least two"):
        rank_agreement({"a": 1.0}, {"a": 1.0})


def test_zero_costs_give_a_bounded_gain():
    """A perfect memoryless twin (cost 0, e.g. a monitor with no alarm errors) gives gain −1, not −inf."""
    twin, full = {"gru": np.zeros(6)}, {"gru": np.array([0.0, 1.0, 0.0, 2.0, 0.0, 1.0])}
    res = paired_gain(twin, full, n_boot=200)
    assert res.gain == -1.0 and -1.0 <= res.ci_low <= res.ci_high <= 0.0
    assert res.verdict == FRAME_INDEPENDENT
    both_zero = paired_gain({"gru": np.zeros(4)}, {"gru": np.zeros(4)}, n_boot=50)
    assert both_zero.gain == 0.0 and both_zero.verdict == FRAME_INDEPENDENT


def test_bootstrap_interval_equals_the_replicate_loop():
    """The vectorized replicates are the per-replicate resample-pick-gap loop, on the same draws."""
    rng = np.random.default_rng(3)
    base = {f: rng.uniform(1.0, 2.0, (2, 7)) for f in ("a", "b", "c")}
    treated = {f: c * rng.uniform(0.7, 1.1, c.shape) for f, c in base.items()}
    g = paired_gain(base, treated, n_boot=300, seed=5)
    b, t = np.stack(list(base.values())), np.stack(list(treated.values()))
    draw = np.random.default_rng(5)
    si, ei = draw.integers(0, 2, (300, 2)), draw.integers(0, 7, (300, 7))
    reps = []
    for r in range(300):
        k = int(np.argmin(t[:, si[r]][:, :, ei[r]].mean(axis=(1, 2))))
        mb, mt = b[k][si[r]][:, ei[r]].mean(), t[k][si[r]][:, ei[r]].mean()
        reps.append((mb - mt) / max(mb, mt))
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert g.ci_low == pytest.approx(lo, abs=1e-12) and g.ci_high == pytest.approx(hi, abs=1e-12)
