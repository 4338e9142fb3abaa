"""Verdicts on the claims the study tests, read off the measured results (never set by hand).

Each claim gets `supported`, `refuted`, `depends` (true in some measured settings, false in others)
or `inconclusive` (the cells that would decide it are missing or their intervals straddle the margin),
with an evidence sentence quoting the numbers it rests on.
"""

from __future__ import annotations

import math

NEEDS = "needs temporal modeling"
ENOUGH = "frame-independent is enough"

CLAIMS = {
    1: "Slideshow-like streams need no temporal coherence: each frame can be modeled on its own.",
    2: "Transformers cannot model dynamic video: self-attention only relates items within one frame.",
    3: "Gaussian smoothness gives coherence: a smooth (Gaussian) prior over time is enough for consistent output.",
    4: "Frame-by-frame prediction works for static sequences but not for dynamic ones.",
    5: "Machines need no coherence: machine consumers only need per-sample accuracy.",
}


def _metric(cell: dict, model: str, key: str) -> float:
    v = cell.get("models", {}).get(model, {}).get("metrics", {}).get(key)
    return float(v) if v is not None and math.isfinite(float(v)) else math.nan


def _fmt_need(name: str, consumer: str, need: dict) -> str:
    def pct(x):
        return "–" if x is None or not math.isfinite(x) else f"{x:+.0%}"

    return (
        f"{name}/{consumer}: gap {pct(need['gap'])} [{pct(need['ci_low'])}, {pct(need['ci_high'])}] "
        f"({need['best_temporal']} vs {need['best_memoryless']}) → {need['verdict']}"
        + (f" ({need['note']})" if need.get("note") else "")
    )


def _cells(results: dict, pred) -> list[tuple[str, dict]]:
    return [(n, c) for n, c in results.get("cells", {}).items() if c.get("models") and pred(n, c)]


def _is_static(name: str, cell: dict) -> bool:
    return cell.get("scenario") == "slideshow"


def _is_dynamic_target(name: str, cell: dict) -> bool:
    return cell.get("scenario") in ("tracking", "multirate") and cell.get("knobs", {}).get("target") in ("velocity", "future_position")


def _needs(cells, consumer: str | None = None) -> list[tuple[str, str, dict]]:
    out = []
    for name, cell in cells:
        for cons, need in cell.get("need", {}).items():
            if consumer is None or cons == consumer:
                out.append((name, cons, need))
    return out


def claim_slideshow(results: dict) -> tuple[str, str]:
    """Claim 1 from the slideshow cells' need verdicts (all consumers)."""
    needs = _needs(_cells(results, _is_static))
    if not needs:
        return "inconclusive", "No slideshow cell finished."
    verdicts = {n["verdict"] for _, _, n in needs}
    evidence = "; ".join(_fmt_need(*x) for x in needs)
    if verdicts == {ENOUGH}:
        return "supported", evidence
    if NEEDS in verdicts and ENOUGH in verdicts:
        return "depends", "Depends on the consumer: " + evidence
    if NEEDS in verdicts:
        return "refuted", evidence
    return "inconclusive", evidence


def _is_dynamic_video(name: str, cell: dict) -> bool:
    return "camera" in cell.get("inputs", []) and cell.get("scenario") in ("tracking", "multirate", "linear_gaussian")


def claim_transformer(results: dict) -> tuple[str, str]:
    """Claim 2: does temporal attention over frame tokens beat the per-frame model on moving scenes?"""
    parts, wins = [], []
    for name, cell in _cells(results, _is_dynamic_video):
        t, f = _metric(cell, "transformer", "rmse"), _metric(cell, "framewise", "rmse")
        if math.isnan(t) or math.isnan(f):
            continue
        best_r2 = max((_metric(cell, m, "r2") for m in cell["models"]), default=math.nan)
        if not best_r2 >= 0.5:  # no model learned the target: its RMSE says nothing about attention
            parts.append(f"{name}: no model learned the target within the budget (best R² {best_r2:.2f})")
            continue
        wins.append(t < 0.9 * f)
        parts.append(f"{name}: transformer RMSE {t:.3g} vs framewise {f:.3g} ({t / f - 1:+.0%})")
    if not wins:
        return "inconclusive", ("; ".join(parts) or "No cell with moving frames finished for both models.")
    evidence = f"The transformer beat the per-frame model by more than 10 % in {sum(wins)} of {len(wins)} moving-scene cells: " + "; ".join(parts)
    if all(wins):
        return "refuted", evidence
    if not any(wins):
        return "supported", evidence
    return "depends", evidence


def claim_smoothness(results: dict) -> tuple[str, str]:
    """Claim 3: the GP prior lowers flicker on noisy streams; does it also handle jumps (cuts)?"""
    noisy = _cells(results, lambda n, c: c.get("scenario") == "tracking" and float(c.get("knobs", {}).get("pixel_noise", 0)) >= 0.1)
    static = _cells(results, _is_static)
    parts, smoother, jump_ok = [], [], []
    for name, cell in noisy:
        g, f = _metric(cell, "gp", "flicker"), _metric(cell, "framewise", "flicker")
        if not (math.isnan(g) or math.isnan(f)):
            smoother.append(g < f)
            parts.append(f"{name}: GP flicker {g:.3g} vs framewise {f:.3g}")
    for name, cell in static:
        g, f = _metric(cell, "gp", "recovery_mean_s"), _metric(cell, "framewise", "recovery_mean_s")
        gl, fl = _metric(cell, "gp", "rmse"), _metric(cell, "framewise", "rmse")
        if not (math.isnan(gl) or math.isnan(fl)):
            jump_ok.append(gl <= fl * 1.05 and not (g > f * 1.5 and g - f > 0.05))
            parts.append(f"{name}: GP RMSE {gl:.3g} vs framewise {fl:.3g}, recovery after cuts {g:.2f} s vs {f:.2f} s")
    if not smoother and not jump_ok:
        return "inconclusive", "No noisy-tracking or slideshow cell finished for both the GP and framewise models."
    evidence = "; ".join(parts)
    if smoother and all(smoother) and jump_ok and all(jump_ok):
        return "supported", evidence
    if smoother and all(smoother):
        return "depends", "Smoothing removes jitter but lags or averages across semantic jumps: " + evidence
    return "refuted", evidence


def claim_static_vs_dynamic(results: dict) -> tuple[str, str]:
    """Claim 4: memoryless enough on static streams, not on dynamic targets (tracking consumer)."""
    static = _needs(_cells(results, _is_static), "tracking")
    dynamic = _needs(_cells(results, _is_dynamic_target), "tracking")
    if not static or not dynamic:
        return "inconclusive", "Needs both a slideshow cell and a velocity/future-position cell."
    evidence = "; ".join(_fmt_need(*x) for x in static + dynamic)
    static_ok = all(n["verdict"] != NEEDS for _, _, n in static)
    dynamic = [x for x in dynamic if x[2]["verdict"] != "inconclusive"]
    if not dynamic:
        return "inconclusive", "The dynamic-target cells are inconclusive: " + evidence
    dynamic_needs = all(n["verdict"] == NEEDS for _, _, n in dynamic)
    if static_ok and dynamic_needs:
        return "supported", evidence
    if not static_ok and not any(n["verdict"] == NEEDS for _, _, n in dynamic):
        return "refuted", evidence
    return "depends", evidence


def claim_machines(results: dict) -> tuple[str, str]:
    """Claim 5: count consumer settings that need temporal modeling and where RMSE picks the wrong model."""
    needs = _needs(_cells(results, lambda n, c: True))
    if not needs:
        return "inconclusive", "No cell finished."
    needed = [(n, c) for n, c, need in needs if need["verdict"] == NEEDS]
    disagree = [
        f"{name}/{cons} (RMSE picks {ra['rmse_pick']}, the consumer {ra['consumer_pick']})"
        for name, cell in results.get("cells", {}).items()
        for cons, ra in cell.get("rank_agreement", {}).items()
        if ra.get("picks_agree") is False
    ]
    imu = _cells(results, lambda n, c: c.get("scenario") == "imu_motion")
    imu_part = ""
    for name, cell in imu:
        f = _metric(cell, "framewise", "rmse")
        best = min((_metric(cell, m, "rmse"), m) for m in cell["models"] if cell["models"][m].get("family") != "framewise")
        imu_part += f" On {name}, framewise RMSE {f:.3g} vs {best[1]} {best[0]:.3g}."
    evidence = (
        f"{len(needed)} of {len(needs)} (cell, consumer) settings need temporal modeling"
        + (f" ({', '.join(f'{n}/{c}' for n, c in needed[:6])}{' …' if len(needed) > 6 else ''})" if needed else "")
        + f"; RMSE ranks a different best model than the consumer in {len(disagree)} setting(s)"
        + (f": {'; '.join(disagree[:4])}" if disagree else "")
        + "."
        + imu_part
    )
    if needed:
        return "refuted", evidence
    return "supported" if all(n["verdict"] == ENOUGH for _, _, n in needs) else "inconclusive", evidence


ASSESSORS = {1: claim_slideshow, 2: claim_transformer, 3: claim_smoothness, 4: claim_static_vs_dynamic, 5: claim_machines}


def assess_claims(results: dict) -> list[dict]:
    """The five claims with verdict and evidence, computed from a results dict."""
    out = []
    for cid, text in CLAIMS.items():
        verdict, evidence = ASSESSORS[cid](results)
        out.append({"id": cid, "claim": text, "verdict": verdict, "evidence": evidence})
    return out
