"""From a cell's evaluation rows to its controlled verdicts: memory gain, consistency gain, oracle gap.

Labels: `<family>` is a full model, `<family>-twin` its memoryless twin (same architecture, data,
steps and seed, memory cut), `+ema` the same model behind an exponential smoother tuned per
consumer on validation episodes. Per consumer, with costs paired over seeds and test episodes
(`seqsense.evaluate.verdict.paired_gain`; the family is the one whose full model costs least,
re-picked in every bootstrap replicate, among the learned families that have memory):

- memory gain: twin → full model of that family;
- consistency gain: twin → the twin behind its smoother (smoothing a memoryless model);
- memory beyond smoothing: smoothed twin → full model;
- the verdict (`which_pays`): needs memory / needs consistency only / frame-independent is enough /
  inconclusive, with the lag the smoothing costs.

A kalman model that runs the log's own stored system is the oracle, not a learned model: it is
reported but never picked. Accuracy gains are 1 − MSE(full) / MSE(twin), for the learned family
with the lowest full-model MSE, beside the oracle's gain where the scenario has one.
"""

from __future__ import annotations

import math

import numpy as np

from seqsense.evaluate.verdict import (
    FRAME_INDEPENDENT,
    INCONCLUSIVE,
    NEEDS_CONSISTENCY,
    NEEDS_MEMORY,
    paired_gain,
    rank_agreement,
    which_pays,
)
from seqsense.study.cell import SMOOTHED, TWIN
from seqsense.study.config import MIN_R2, StudyConfig

CONTROL_CONSUMER = "tracking"  # every cell has the tracking controller; controls read its verdict
MIN_ORACLE_FRACTION = 0.5  # a positive control's learned accuracy gain must reach this share of the oracle's


def _costs(rows: list[dict], label: str, key: str, seeds: list) -> np.ndarray | None:
    """(S, E) array of `key` for a model label, or None when any value is missing."""
    arr = np.asarray([[r.get(key, math.nan) for r in rows if r["model"] == label and r["seed"] == s] for s in seeds], float)
    return arr if arr.size and np.isfinite(arr).all() and len({len(x) for x in arr}) == 1 else None


def _mean_metrics(results: list[dict], label: str, rows: list[dict]) -> dict:
    from seqsense.evaluate.replay import mean_row

    info = dict(results[0]["models"][label])
    for key in ("train_seconds", "train_steps"):
        vals = [res["models"][label].get(key) for res in results if label in res["models"]]
        info[key] = float(np.mean(vals)) if vals and None not in vals else None
    mrows = [r for r in rows if r["model"] == label]
    info["metrics"] = mean_row(mrows)
    info["metrics"]["mse"] = float(np.mean([r["rmse"] ** 2 for r in mrows])) if mrows and "rmse" in mrows[0] else math.nan
    target_var = np.nanmean([res.get("target_var") or math.nan for res in results])
    if math.isfinite(target_var) and target_var > 0 and "rmse" in info["metrics"]:
        info["metrics"]["r2"] = 1.0 - info["metrics"]["mse"] / target_var
    info["per_episode"] = [{k: v for k, v in r.items() if k != "model"} for r in mrows]
    return info


def learned_families(models: dict) -> list[str]:
    """Families with memory, learned (not the stored-system oracle), that have a twin."""
    return [label for label, m in models.items()
            if not m["twin"] and not m["wrapper"] and m.get("has_memory") and not m.get("oracle_system")
            and label + TWIN in models]


def accuracy_gain(models: dict, oracle: dict | None) -> dict:
    """1 − MSE(full)/MSE(twin) per learned family, the cell's (best full model's), and the oracle's."""
    per_family = {}
    for f in learned_families(models):
        full, twin = models[f]["metrics"].get("mse", math.nan), models[f + TWIN]["metrics"].get("mse", math.nan)
        per_family[f] = 1.0 - full / twin if twin > 0 else (0.0 if full == twin else math.nan)
    best = min(per_family, key=lambda f: models[f]["metrics"]["mse"], default=None)
    out = {"per_family": per_family, "family": best, "learned": per_family.get(best, math.nan) if best else math.nan}
    if oracle:
        out["oracle"] = oracle["gain"]
        out["oracle_kind"] = oracle["kind"]
        out["fraction_of_oracle"] = out["learned"] / oracle["gain"] if oracle["gain"] > 0 else math.nan
    return out


def consumer_verdict(costs: dict, models: dict, lag: dict, config: StudyConfig) -> dict | None:
    """The controlled comparison for one consumer: memory, consistency, beyond smoothing, verdict."""
    fams = [f for f in learned_families(models) if all(x in costs for x in (f, f + TWIN, f + TWIN + SMOOTHED))]
    if not fams:
        return None
    kw = dict(margin=config.margin, n_boot=config.n_boot, seed=0)
    full = {f: costs[f] for f in fams}
    twin = {f: costs[f + TWIN] for f in fams}
    twin_smooth = {f: costs[f + TWIN + SMOOTHED] for f in fams}
    memory = paired_gain(twin, full, pick=full, positive=NEEDS_MEMORY, **kw)
    consistency = paired_gain(twin, twin_smooth, pick=full, positive=NEEDS_CONSISTENCY, **kw)
    beyond = paired_gain(twin_smooth, full, pick=full, positive=NEEDS_MEMORY, **kw)
    f = memory.family
    full_smooth = {g: costs[g + SMOOTHED] for g in fams if g + SMOOTHED in costs}
    out = {
        "verdict": which_pays(memory, consistency, beyond),
        "family": f,
        "memory": memory.as_dict(),
        "consistency": consistency.as_dict(),
        "beyond_smoothing": beyond.as_dict(),
        "consistency_full": paired_gain(full, full_smooth, pick=full, positive=NEEDS_CONSISTENCY, **kw).as_dict() if full_smooth else None,
        "lag_s": {"twin": lag.get(f + TWIN), "twin_smoothed": lag.get(f + TWIN + SMOOTHED), "full": lag.get(f)},
        "tau_s": models[f + TWIN + SMOOTHED].get("tau_s", {}),
    }
    if "framewise" in costs:
        out["framewise_cost"] = float(np.mean(costs["framewise"]))
    return out


def summarize_cell(results: list[dict], config: StudyConfig) -> dict:
    """Mean metrics per model, per-consumer controlled verdicts, accuracy and oracle gains of one cell."""
    rows = [r for res in results for r in res["rows"]]
    labels = list(results[0]["models"])
    seeds = sorted({r["seed"] for r in rows})
    models = {label: _mean_metrics(results, label, rows) for label in labels}
    oracle = _merge_oracle([res.get("oracle") for res in results])
    consumers = sorted({k.split(".")[0] for r in rows for k in r if k.endswith(".cost")})
    best_r2 = max((m["metrics"].get("r2", math.nan) for m in models.values()), default=math.nan)
    need, ranks = {}, {}
    for cons in consumers:
        costs = {label: a for label in labels if (a := _costs(rows, label, f"{cons}.cost", seeds)) is not None}
        lag = {label: models[label]["metrics"].get(f"{cons}.lag_s", models[label]["metrics"].get("lag_s")) for label in labels}
        v = consumer_verdict(costs, models, lag, config)
        if v is None:
            continue
        if math.isfinite(best_r2) and best_r2 < MIN_R2:
            # Nothing learned the target: a small gap says nothing about the need for memory.
            v["verdict"] = INCONCLUSIVE
            v["note"] = f"no model learned the target within the budget (best R² {best_r2:.2f} < {MIN_R2})"
        need[cons] = v
        unwrapped = [m for m in costs if not models[m]["wrapper"]]
        if len(unwrapped) >= 2:
            ranks[cons] = rank_agreement({m: models[m]["metrics"].get("rmse", math.nan) for m in unwrapped},
                                         {m: float(np.mean(costs[m])) for m in unwrapped})
    accuracy = accuracy_gain(models, oracle)
    return {
        "target_fields": results[0].get("target_fields"),
        "models": models,
        "consumers": consumers,
        "need": need,
        "accuracy_gain": accuracy,
        "oracle": oracle,
        "oracle_disagrees": oracle_disagreement(need.get(CONTROL_CONSUMER), accuracy, oracle, config.margin),
        "rank_agreement": ranks,
        "skipped": results[0].get("skipped", {}),
        "encoder": results[0].get("encoder"),
        "example": results[0]["example"],
    }


def _merge_oracle(oracles: list[dict | None]) -> dict | None:
    """One oracle entry over seeds: MSEs pooled over every seed's episodes."""
    oracles = [o for o in oracles if o]
    if not oracles:
        return None
    eps = [e for o in oracles for e in o["per_episode"]]
    mem = float(np.mean([e["mse_memory"] for e in eps]))
    less = float(np.mean([e["mse_memoryless"] for e in eps]))
    gain = 1.0 - mem / less if less > 0 else 0.0
    return {**{k: v for k, v in oracles[0].items() if k != "per_episode"}, "mse_memory": mem, "mse_memoryless": less, "gain": gain, "per_episode": eps}


def oracle_disagreement(need: dict | None, accuracy: dict, oracle: dict | None, margin: float) -> str | None:
    """A sentence when the learned memory verdict contradicts the oracle, else None."""
    if not oracle or need is None:
        return None
    memory = need["memory"]["verdict"]
    if oracle["gain"] > margin and memory == FRAME_INDEPENDENT:
        return f"the oracle gains {oracle['gain']:.0%} from memory, the learned models show none (memory verdict: {memory})"
    if oracle["gain"] <= margin and memory == NEEDS_MEMORY:
        return f"the oracle gains {oracle['gain']:.0%} from memory, yet the learned models do (memory verdict: {memory})"
    return None


def control_status(cell: dict, entry: dict) -> dict | None:
    """Pass/fail of a cell marked as a control in its recipe, with the numbers it rests on."""
    kind = cell.get("control")
    if kind is None:
        return None
    need = entry.get("need", {}).get(CONTROL_CONSUMER)
    acc = entry.get("accuracy_gain", {})
    if need is None:
        return {"kind": kind, "status": "not run", "reason": entry.get("status", "no verdict")}
    memory = need["memory"]
    out = {"kind": kind, "consumer": CONTROL_CONSUMER, "memory_verdict": memory["verdict"], "memory_gain": memory["gain"],
           "ci": [memory["ci_low"], memory["ci_high"]], "family": memory["family"], "learned_gain": acc.get("learned"),
           "oracle_gain": acc.get("oracle"), "fraction_of_oracle": acc.get("fraction_of_oracle")}
    if kind == "negative":
        ok = memory["verdict"] == FRAME_INDEPENDENT
        out["expect"] = f"memory: {FRAME_INDEPENDENT}"
    else:
        frac = acc.get("fraction_of_oracle")
        ok = memory["verdict"] == NEEDS_MEMORY and frac is not None and math.isfinite(frac) and frac >= MIN_ORACLE_FRACTION
        out["expect"] = f"memory: {NEEDS_MEMORY}, learned accuracy gain ≥ {MIN_ORACLE_FRACTION:.0%} of the oracle's"
    out["status"] = "pass" if ok else "fail"
    return out
