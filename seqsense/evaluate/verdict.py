"""Does this setting need temporal modeling? The consumer-cost gap and its bootstrap verdict.

Input: for each model, its consumer cost per seed and episode, an array (S, E) (or (E,) for one
seed), all models on the same episodes in the same order and with the same number of seeds. A
model's cost is the mean over its cells. With M the memoryless models and T the temporal ones:

    gap = (c_M − c_T) / max(c_M, c_T),   c_M = min_{m∈M} cost_m,  c_T = min_{t∈T} cost_t

gap > 0: the best temporal model is cheaper by that fraction of the memoryless cost. Dividing by
the larger cost keeps the gap in [−1, 1] (0 when both costs are 0): a consumer whose cost can be
exactly zero (a safety monitor with no false alarm and no miss) would otherwise give −∞ whenever
the memoryless model is perfect. For gap > 0 this is the plain (c_M − c_T) / c_M.

Confidence interval: percentile bootstrap with paired resampling: each replicate draws E episode
indices and S seed indices with replacement, the same draws for every model (episodes are shared,
so model differences are compared on the same episodes). By default (`select="replicate"`) the
best model of each group is re-picked inside every replicate, so the interval includes the
uncertainty of which model is best; `select="full"` fixes the picks on the full data.

Verdict with margin δ (default 0.05): CI low > δ → "needs temporal modeling"; CI high < δ →
"frame-independent is enough"; otherwise "inconclusive".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import kendalltau

NEEDS_TEMPORAL = "needs temporal modeling"
FRAME_INDEPENDENT = "frame-independent is enough"
INCONCLUSIVE = "inconclusive"
SELECT_MODES = ("replicate", "full")


@dataclasses.dataclass
class TemporalGap:
    """The relative cost gap between the best memoryless and best temporal model, with its CI and verdict."""

    gap: float
    ci_low: float
    ci_high: float
    verdict: str
    best_memoryless: str
    best_temporal: str
    cost_memoryless: float
    cost_temporal: float
    margin: float
    level: float
    n_boot: int

    def as_dict(self) -> dict:
        """A JSON-ready dict of all fields."""
        return dataclasses.asdict(self)


def _cost_table(costs: Mapping[str, Sequence]) -> tuple[list[str], np.ndarray]:
    """Model names and a (models, S, E) float array, checking shapes and finiteness."""
    names = list(costs)
    arrays = []
    for n in names:
        a = np.asarray(costs[n], dtype=np.float64)
        a = a[None, :] if a.ndim == 1 else a
        if a.ndim != 2 or a.size == 0:
            raise ValueError(f"costs[{n!r}] must be a non-empty array (E,) or (S, E); got shape {a.shape}.")
        if not np.isfinite(a).all():
            raise ValueError(f"costs[{n!r}] holds non-finite values; drop or re-run those episodes.")
        arrays.append(a)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        detail = ", ".join(f"{n}: {a.shape}" for n, a in zip(names, arrays))
        raise ValueError(f"all models need costs of the same shape (seeds, episodes) for paired resampling; got {detail}.")
    return names, np.stack(arrays)


def _gap(ml: float, tmp: float) -> float:
    top = max(ml, tmp)
    return 0.0 if top == 0 else (ml - tmp) / top


def verdict_from_ci(ci_low: float, ci_high: float, margin: float = 0.05) -> str:
    """The verdict for a gap confidence interval and margin."""
    if ci_low > margin:
        return NEEDS_TEMPORAL
    if ci_high < margin:
        return FRAME_INDEPENDENT
    return INCONCLUSIVE


def temporal_gap(costs: Mapping[str, Sequence], memoryless: Sequence[str], temporal: Sequence[str] | None = None,
                 margin: float = 0.05, n_boot: int = 2000, level: float = 0.95, select: str = "replicate",
                 seed: int = 0) -> TemporalGap:
    """Relative consumer-cost gap best-memoryless vs best-temporal with a paired bootstrap CI and verdict."""
    if select not in SELECT_MODES:
        raise ValueError(f"select={select!r}; valid: {', '.join(SELECT_MODES)}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}.")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}.")
    names, table = _cost_table(costs)  # (M, S, E)
    unknown = [m for m in memoryless if m not in names]
    if unknown:
        raise ValueError(f"memoryless models {unknown} have no costs; models with costs: {', '.join(names)}.")
    temporal = [n for n in names if n not in memoryless] if temporal is None else list(temporal)
    unknown = [m for m in temporal if m not in names]
    if unknown:
        raise ValueError(f"temporal models {unknown} have no costs; models with costs: {', '.join(names)}.")
    both = sorted(set(memoryless) & set(temporal))
    if both:
        raise ValueError(f"models {both} are listed as both memoryless and temporal; list each in one group.")
    if not memoryless or not temporal:
        raise ValueError(f"need at least one memoryless and one temporal model; got memoryless={list(memoryless)}, "
                         f"temporal={temporal}.")
    i_ml = np.array([names.index(m) for m in memoryless])
    i_tm = np.array([names.index(m) for m in temporal])
    full = table.mean(axis=(1, 2))  # (M,)
    b_ml, b_tm = i_ml[np.argmin(full[i_ml])], i_tm[np.argmin(full[i_tm])]
    gap = _gap(full[b_ml], full[b_tm])

    rng = np.random.default_rng(seed)
    _, s, e = table.shape
    reps = np.empty(n_boot)
    for r in range(n_boot):
        si, ei = rng.integers(0, s, s), rng.integers(0, e, e)
        mean = table[:, si][:, :, ei].mean(axis=(1, 2))
        if select == "replicate":
            reps[r] = _gap(mean[i_ml].min(), mean[i_tm].min())
        else:
            reps[r] = _gap(mean[b_ml], mean[b_tm])
    alpha = 0.5 * (1.0 - level)
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return TemporalGap(float(gap), float(lo), float(hi), verdict_from_ci(lo, hi, margin), names[b_ml], names[b_tm],
                       float(full[b_ml]), float(full[b_tm]), margin, level, n_boot)


def rank_agreement(rmse: Mapping[str, float], cost: Mapping[str, float]) -> dict:
    """Kendall tau between models' per-frame RMSE and consumer cost, and the model each would pick.

    Keys: kendall_tau, p_value (NaN with fewer than 3 models), rmse_pick, consumer_pick,
    picks_agree (bool), n_models. Both are lower-is-better, so tau = 1 means the same ranking.
    """
    names = [n for n in rmse if n in cost]
    if len(names) < 2:
        raise ValueError(f"need at least two models in both rmse and cost; common models: {names}.")
    r = np.array([rmse[n] for n in names], dtype=np.float64)
    c = np.array([cost[n] for n in names], dtype=np.float64)
    tau, p = kendalltau(r, c)
    rmse_pick, consumer_pick = names[int(np.argmin(r))], names[int(np.argmin(c))]
    return {
        "kendall_tau": float(tau),
        "p_value": float(p) if len(names) >= 3 else math.nan,
        "rmse_pick": rmse_pick,
        "consumer_pick": consumer_pick,
        "picks_agree": rmse_pick == consumer_pick,
        "n_models": len(names),
    }


# ---- the controlled comparison: each family against its own memoryless twin -------------------
NEEDS_MEMORY = "needs memory"
NEEDS_CONSISTENCY = "needs consistency only"
MEMORY_VERDICTS = (NEEDS_MEMORY, NEEDS_CONSISTENCY, FRAME_INDEPENDENT, INCONCLUSIVE)


@dataclasses.dataclass
class PairedGain:
    """The relative cost gain base → treated of the family picked by `pick`, with its CI and verdict.

    gain = (c_base − c_treated) / max(c_base, c_treated) for the picked family f* = argmin_f pick_f;
    the pick is re-made inside every bootstrap replicate (the interval includes the uncertainty of
    which family is best). Verdict (one-sided margin δ): CI low > δ → `positive`, CI high < δ →
    "frame-independent is enough" (the treatment does not pay), otherwise "inconclusive".
    """

    gain: float
    ci_low: float
    ci_high: float
    verdict: str
    family: str
    cost_base: float
    cost_treated: float
    margin: float
    level: float
    n_boot: int
    per_family: dict  # family -> {"gain", "cost_base", "cost_treated"} on the full data

    def as_dict(self) -> dict:
        """A JSON-ready dict of all fields."""
        return dataclasses.asdict(self)


def paired_gain(base: Mapping[str, Sequence], treated: Mapping[str, Sequence], pick: Mapping[str, Sequence] | None = None,
                positive: str = NEEDS_MEMORY, margin: float = 0.05, n_boot: int = 2000, level: float = 0.95,
                seed: int = 0) -> PairedGain:
    """Gain of `treated` over `base` (same families, costs (S, E) each) for the family best by `pick`.

    Memory gain: base = twins, treated = full models, pick = full models. Consistency gain: base =
    twins, treated = smoothed twins, pick = full models (the same family as the memory verdict).
    """
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1; got level={level}, n_boot={n_boot}.")
    pick = treated if pick is None else pick
    families = [f for f in pick if f in base and f in treated]
    if not families:
        raise ValueError(f"no family has costs in base, treated and pick; base: {sorted(base)}, treated: {sorted(treated)}, pick: {sorted(pick)}.")
    _, b = _cost_table({f: base[f] for f in families})
    _, t = _cost_table({f: treated[f] for f in families})
    _, p = _cost_table({f: pick[f] for f in families})
    if not b.shape == t.shape == p.shape:
        raise ValueError(f"base, treated and pick need costs of one shape (seeds, episodes); got {b.shape}, {t.shape}, {p.shape}.")
    mb, mt, mp = b.mean(axis=(1, 2)), t.mean(axis=(1, 2)), p.mean(axis=(1, 2))
    best = int(np.argmin(mp))
    rng = np.random.default_rng(seed)
    _, s, e = b.shape
    reps = np.empty(n_boot)
    for r in range(n_boot):
        si, ei = rng.integers(0, s, s), rng.integers(0, e, e)
        k = int(np.argmin(p[:, si][:, :, ei].mean(axis=(1, 2))))
        reps[r] = _gap(b[k][si][:, ei].mean(), t[k][si][:, ei].mean())
    alpha = 0.5 * (1.0 - level)
    lo, hi = (float(q) for q in np.quantile(reps, [alpha, 1.0 - alpha]))
    verdict = positive if lo > margin else FRAME_INDEPENDENT if hi < margin else INCONCLUSIVE
    per_family = {f: {"gain": _gap(mb[i], mt[i]), "cost_base": float(mb[i]), "cost_treated": float(mt[i])} for i, f in enumerate(families)}
    return PairedGain(_gap(mb[best], mt[best]), lo, hi, verdict, families[best], float(mb[best]), float(mt[best]),
                      margin, level, n_boot, per_family)


def which_pays(memory: PairedGain, consistency: PairedGain | None, beyond_smoothing: PairedGain | None) -> str:
    """The consumer's verdict from the memory gain, the consistency gain and memory beyond smoothing.

    - "needs memory": the memory gain clears the margin, and smoothing the twin does not match the
      full model (memory beyond smoothing is not below the margin);
    - "needs consistency only": smoothing the memoryless twin clears the margin and memory adds
      nothing conclusive beyond it;
    - "frame-independent is enough": neither memory nor smoothing clears the margin (both CIs below it);
    - otherwise "inconclusive".
    """
    smooth_matches = beyond_smoothing is not None and beyond_smoothing.verdict == FRAME_INDEPENDENT
    if memory.verdict == NEEDS_MEMORY and not smooth_matches:
        return NEEDS_MEMORY
    if consistency is not None and consistency.verdict == NEEDS_CONSISTENCY and (memory.verdict != NEEDS_MEMORY or smooth_matches):
        return NEEDS_CONSISTENCY
    if memory.verdict == FRAME_INDEPENDENT and (consistency is None or consistency.verdict == FRAME_INDEPENDENT):
        return FRAME_INDEPENDENT
    return INCONCLUSIVE
