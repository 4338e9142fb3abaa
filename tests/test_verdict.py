"""Tests of the temporal-gap verdict and the RMSE-vs-consumer rank agreement."""

import math

import numpy as np
import pytest

from seqsense.evaluate.verdict import (
    FRAME_INDEPENDENT,
    INCONCLUSIVE,
    NEEDS_TEMPORAL,
    rank_agreement,
    temporal_gap,
    verdict_from_ci,
)


def _costs(means, n_seeds=3, n_episodes=20, noise=0.05, seed=0):
    """Per-seed, per-episode costs: a shared episode difficulty times each model's level, plus noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0.5, 1.5, n_episodes)
    return {name: m * difficulty * (1 + noise * rng.standard_normal((n_seeds, n_episodes)))
            for name, m in means.items()}


def test_clearly_better_temporal_model_needs_temporal_modeling():
    costs = _costs({"framewise": 1.0, "framewise_big": 1.1, "gru": 0.5, "kalman": 0.6})
    res = temporal_gap(costs, memoryless=["framewise", "framewise_big"], n_boot=500)
    assert res.verdict == NEEDS_TEMPORAL
    assert res.best_memoryless == "framewise" and res.best_temporal == "gru"
    assert res.gap == pytest.approx(0.5, abs=0.03)
    assert res.ci_low <= res.gap <= res.ci_high
    assert res.as_dict()["verdict"] == NEEDS_TEMPORAL


@pytest.mark.parametrize("select", ["replicate", "full"])
def test_equal_costs_do_not_need_temporal_modeling(select):
    costs = _costs({"framewise": 1.0, "gru": 1.0})
    res = temporal_gap(costs, memoryless=["framewise"], n_boot=500, select=select)
    assert res.verdict != NEEDS_TEMPORAL
    assert res.verdict == FRAME_INDEPENDENT
    assert res.ci_low < 0.0 < res.ci_high or abs(res.gap) < 0.05


def test_noisy_small_gap_is_inconclusive_and_seeded():
    costs = _costs({"framewise": 1.0, "gru": 0.94}, n_seeds=1, n_episodes=6, noise=0.4, seed=3)
    a = temporal_gap(costs, memoryless=["framewise"], n_boot=400, seed=7)
    b = temporal_gap(costs, memoryless=["framewise"], n_boot=400, seed=7)
    assert a == b
    assert a.verdict == INCONCLUSIVE


def test_one_dimensional_costs_and_explicit_temporal_list():
    costs = {"framewise": [2.0, 2.0, 2.0], "gru": [1.0, 1.0, 1.0], "ignored": [0.1, 0.1, 0.1]}
    res = temporal_gap(costs, memoryless=["framewise"], temporal=["gru"], n_boot=50)
    assert res.gap == 0.5 and res.ci_low == 0.5 and res.ci_high == 0.5


def test_verdict_thresholds():
    assert verdict_from_ci(0.06, 0.3) == NEEDS_TEMPORAL
    assert verdict_from_ci(-0.2, 0.04) == FRAME_INDEPENDENT
    assert verdict_from_ci(0.01, 0.3) == INCONCLUSIVE


@pytest.mark.parametrize("costs,kwargs,match", [
    ({"framewise": np.ones((2, 5)), "gru": np.ones((3, 5))}, {}, "same shape"),
    ({"framewise": [1.0, np.nan], "gru": [1.0, 1.0]}, {}, "non-finite"),
    ({"framewise": [1.0], "gru": [1.0]}, {"memoryless": ["cnn"]}, "valid|no costs"),
    ({"framewise": [1.0], "gru": [1.0]}, {"temporal": ["framewise"]}, "both memoryless and temporal"),
    ({"framewise": [1.0], "gru": [1.0]}, {"select": "best"}, "valid: replicate, full"),
])
def test_bad_inputs(costs, kwargs, match):
    kwargs = {"memoryless": ["framewise"], **kwargs}
    with pytest.raises(ValueError, match=match):
        temporal_gap(costs, **kwargs)


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


def test_zero_costs_give_a_bounded_gap():
    """A perfect memoryless model (cost 0, e.g. a monitor with no alarm errors) gives gap −1, not −inf."""
    costs = {"framewise": np.zeros(6), "gru": np.array([0.0, 1.0, 0.0, 2.0, 0.0, 1.0])}
    res = temporal_gap(costs, memoryless=["framewise"], n_boot=200)
    assert res.gap == -1.0 and -1.0 <= res.ci_low <= res.ci_high <= 0.0
    assert res.verdict == "frame-independent is enough"
    both_zero = temporal_gap({"framewise": np.zeros(4), "gru": np.zeros(4)}, memoryless=["framewise"], n_boot=50)
    assert both_zero.gap == 0.0 and both_zero.verdict == "frame-independent is enough"
