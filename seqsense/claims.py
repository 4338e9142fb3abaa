"""Verdicts on the claims the study tests, read off the measured results (never set by hand).

Each claim gets `supported`, `refuted`, `depends` (true in some measured settings, false in others)
or `inconclusive` (the cells that would decide it are missing or their intervals straddle the margin),
with an evidence sentence quoting the numbers it rests on. The evidence is the controlled comparison:
each family against its own memoryless twin (memory), and the twin against itself behind a smoother
(consistency), never one family against another.
"""

from __future__ import annotations

import math

NEEDS = "needs memory"
CONSISTENCY = "needs consistency only"
ENOUGH = "frame-independent is enough"
INCONCLUSIVE = "inconclusive"

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


def _pct(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.0%}"


def _fmt_need(name: str, consumer: str, need: dict) -> str:
    m, c = need["memory"], need["consistency"]
    return (
        f"{name}/{consumer}: memory gain {_pct(m['gain'])} [{_pct(m['ci_low'])}, {_pct(m['ci_high'])}] "
        f"({m['family']} vs its twin), smoothing the twin {_pct(c['gain'])} [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}] → {need['verdict']}"
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
    """Claim 1 from the slideshow cells' memory verdicts (all consumers), twin against full model."""
    needs = _needs(_cells(results, _is_static))
    if not needs:
        return INCONCLUSIVE, "No slideshow cell finished."
    memory = {n["memory"]["verdict"] for _, _, n in needs}
    verdicts = {n["verdict"] for _, _, n in needs}
    evidence = "; ".join(_fmt_need(*x) for x in needs)
    if memory == {ENOUGH} and verdicts <= {ENOUGH}:
        return "supported", evidence
    if memory == {ENOUGH} and CONSISTENCY in verdicts:
        return "depends", "Memory adds nothing, but some consumers pay for jumps that smoothing removes: " + evidence
    if NEEDS in verdicts and ENOUGH in verdicts:
        return "depends", "Depends on the consumer: " + evidence
    if NEEDS in verdicts:
        return "refuted", evidence
    return INCONCLUSIVE, evidence


def _is_dynamic_video(name: str, cell: dict) -> bool:
    return "camera" in cell.get("inputs", []) and cell.get("scenario") in ("tracking", "multirate", "linear_gaussian")


def claim_transformer(results: dict) -> tuple[str, str]:
    """Claim 2: does temporal attention over frame tokens beat the same transformer cut to one tick?"""
    parts, wins = [], []
    for name, cell in _cells(results, _is_dynamic_video):
        t, f = _metric(cell, "transformer", "rmse"), _metric(cell, "transformer-twin", "rmse")
        if math.isnan(t) or math.isnan(f):
            continue
        best_r2 = max((_metric(cell, m, "r2") for m in cell["models"]), default=math.nan)
        if not best_r2 >= 0.5:  # no model learned the target: its RMSE says nothing about attention
            parts.append(f"{name}: no model learned the target within the budget (best R² {best_r2:.2f})")
            continue
        wins.append(t < 0.9 * f)
        parts.append(f"{name}: transformer RMSE {t:.3g} vs its context-1 twin {f:.3g} ({t / f - 1:+.0%})")
    if not wins:
        return INCONCLUSIVE, ("; ".join(parts) or "No cell with moving frames finished for the transformer and its twin.")
    evidence = (f"Attention across frames beat the same transformer cut to one tick by more than 10 % in {sum(wins)} of "
                f"{len(wins)} moving-scene cells: " + "; ".join(parts))
    if all(wins):
        return "refuted", evidence
    if not any(wins):
        return "supported", evidence
    return "depends", evidence


def claim_smoothness(results: dict) -> tuple[str, str]:
    """Claim 3: smoothing a memoryless model (consistency) against memory, on noisy, jumping and distractor cells."""
    parts, enough, not_enough = [], [], []
    for name, cell in _cells(results, lambda n, c: c.get("scenario") in ("tracking", "slideshow")):
        need = cell.get("need", {}).get("tracking")
        if not need:
            continue
        v = need["verdict"]
        if v == CONSISTENCY or (v == ENOUGH and need["consistency"]["verdict"] == ENOUGH):
            enough.append(name)
        elif v == NEEDS:
            not_enough.append(name)
        b = need["beyond_smoothing"]
        parts.append(f"{name}: smoothing the twin {_pct(need['consistency']['gain'])}, memory beyond smoothing "
                     f"{_pct(b['gain'])} [{_pct(b['ci_low'])}, {_pct(b['ci_high'])}] → {v}")
    if not parts:
        return INCONCLUSIVE, "No tracking or slideshow cell finished with the tracking controller."
    evidence = "; ".join(parts)
    if enough and not not_enough:
        return "supported", evidence
    if not_enough and not enough:
        return "refuted", "Smoothing a memoryless model is not enough where memory pays: " + evidence
    return "depends", (f"Smoothing is enough in {len(enough)} cell(s) ({', '.join(enough)}), memory pays beyond it in "
                       f"{len(not_enough)} ({', '.join(not_enough)}): " + evidence)


def claim_static_vs_dynamic(results: dict) -> tuple[str, str]:
    """Claim 4: memoryless enough on static streams, not on dynamic targets (tracking consumer, memory verdicts)."""
    static = _needs(_cells(results, _is_static), "tracking")
    dynamic = _needs(_cells(results, _is_dynamic_target), "tracking")
    if not static or not dynamic:
        return INCONCLUSIVE, "Needs both a slideshow cell and a velocity/future-position cell."
    evidence = "; ".join(_fmt_need(*x) for x in static + dynamic)
    static_ok = all(n["memory"]["verdict"] != NEEDS for _, _, n in static)
    dynamic = [x for x in dynamic if x[2]["memory"]["verdict"] != INCONCLUSIVE and x[2]["verdict"] != INCONCLUSIVE]
    if not dynamic:
        return INCONCLUSIVE, "The dynamic-target cells are inconclusive: " + evidence
    dynamic_needs = all(n["memory"]["verdict"] == NEEDS for _, _, n in dynamic)
    if static_ok and dynamic_needs:
        return "supported", evidence
    if not static_ok and not any(n["memory"]["verdict"] == NEEDS for _, _, n in dynamic):
        return "refuted", evidence
    return "depends", evidence


def claim_machines(results: dict) -> tuple[str, str]:
    """Claim 5: consumer settings that need memory or consistency, and where RMSE picks another model."""
    needs = _needs(_cells(results, lambda n, c: True))
    if not needs:
        return INCONCLUSIVE, "No cell finished."
    needed = [(n, c, need["verdict"]) for n, c, need in needs if need["verdict"] in (NEEDS, CONSISTENCY)]
    disagree = [
        f"{name}/{cons} (RMSE picks {ra['rmse_pick']}, the consumer {ra['consumer_pick']})"
        for name, cell in results.get("cells", {}).items()
        for cons, ra in cell.get("rank_agreement", {}).items()
        if ra.get("picks_agree") is False
    ]
    imu = _cells(results, lambda n, c: c.get("scenario") == "imu_motion")
    imu_part = ""
    for name, cell in imu:
        rows = [(_metric(cell, m, "rmse"), m) for m, info in cell["models"].items() if not info.get("wrapper")]
        rows = [r for r in rows if math.isfinite(r[0])]
        if rows:
            best, worst_twin = min(rows), [r for r in rows if r[1].endswith("-twin") or r[1] == "framewise"]
            if worst_twin:
                ml = min(worst_twin)
                imu_part += f" On {name}, the best memoryless model ({ml[1]}) has RMSE {ml[0]:.3g}, the best model ({best[1]}) {best[0]:.3g}."
    evidence = (
        f"{len(needed)} of {len(needs)} (cell, consumer) settings need memory or consistency"
        + (f" ({', '.join(f'{n}/{c}: {v}' for n, c, v in needed[:6])}{' …' if len(needed) > 6 else ''})" if needed else "")
        + f"; RMSE ranks a different best model than the consumer in {len(disagree)} setting(s)"
        + (f": {'; '.join(disagree[:4])}" if disagree else "")
        + "."
        + imu_part
    )
    if needed:
        return "refuted", evidence
    return "supported" if all(n["verdict"] == ENOUGH for _, _, n in needs) else INCONCLUSIVE, evidence


ASSESSORS = {1: claim_slideshow, 2: claim_transformer, 3: claim_smoothness, 4: claim_static_vs_dynamic, 5: claim_machines}


def assess_claims(results: dict) -> list[dict]:
    """The five claims with verdict and evidence, computed from a results dict."""
    out = []
    for cid, text in CLAIMS.items():
        verdict, evidence = ASSESSORS[cid](results)
        out.append({"id": cid, "claim": text, "verdict": verdict, "evidence": evidence})
    return out
