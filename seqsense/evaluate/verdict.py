"""Does this setting need memory? Controlled gains with paired bootstrap CIs, verdicts, rank agreement.

Input: per model family, a consumer cost per seed and episode, an array (S, E) (or (E,) for one
seed), all on the same episodes in the same order. A *controlled* gain compares a family with itself:
base → treated (twin → full model for memory, twin → smoothed twin for consistency), never one
family with another, which would measure capacity as much as memory:

    gain = (c_base − c_treated) / max(c_base, c_treated)

gain > 0: the treatment is cheaper by that fraction of the base cost. Dividing by the larger cost
keeps the gain in [−1, 1] (0 when both are 0): a consumer whose cost can be exactly zero (a safety
monitor with no false alarm and no miss) would otherwise give −∞.

The family is the one whose `pick` cost (the full models') is lowest. Confidence interval:
percentile bootstrap with paired resampling — each replicate draws E episode indices and S seed
indices with replacement, the same draws for every family, and re-picks the family inside the
replicate, so the interval includes the uncertainty of which family is best. Verdict with margin δ
(one-sided): CI low > δ → the treatment pays; CI high < δ → "frame-independent is enough";
otherwise "inconclusive". `which_pays` combines the memory and consistency gains into the
consumer's verdict.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import kendalltau

NEEDS_MEMORY = "needs memory"
NEEDS_CONSISTENCY = "needs consistency only"
FRAME_INDEPENDENT = "frame-independent is enough"
INCONCLUSIVE = "inconclusive"
MEMORY_VERDICTS = (NEEDS_MEMORY, NEEDS_CONSISTENCY, FRAME_INDEPENDENT, INCONCLUSIVE)


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


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of 0..n-1 occurs in each row of idx (R, m) -> (R, n) float64."""
    out = np.zeros((idx.shape[0], n))
    np.add.at(out, (np.arange(idx.shape[0])[:, None], idx), 1.0)
    return out


def _gap(ml: float, tmp: float) -> float:
    top = max(ml, tmp)
    return 0.0 if top == 0 else (ml - tmp) / top


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
    # each replicate resamples seeds and episodes with replacement; its mean over the resampled grid is
    # Σ count(seed) · count(episode) · cost / (S·E), so all replicates are two matrix products
    cs = _counts(rng.integers(0, s, (n_boot, s)), s)  # (R, S)
    ce = _counts(rng.integers(0, e, (n_boot, e)), e)  # (R, E)
    rep_mean = lambda x: np.einsum("rs,fse,re->rf", cs, x, ce) / (s * e)  # noqa: E731  (R, F)
    k = np.argmin(rep_mean(p), axis=1)
    rb, rt = (np.take_along_axis(rep_mean(x), k[:, None], 1)[:, 0] for x in (b, t))
    top = np.maximum(rb, rt)
    reps = np.divide(rb - rt, top, out=np.zeros_like(top), where=top != 0)
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
