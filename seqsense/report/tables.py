"""The report's content as plain data: number formatting, cell ordering and every table.

Both renderers (`html.py`, `markdown.py`) read the same `Section` tree, so the two files say the
same thing. Every accessor tolerates missing values: a NaN, a null, an absent consumer or a cell
that ended in an error shows as `DASH` and never raises.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterable

DASH = "–"
NEEDS = "needs memory"
CONSISTENCY = "needs consistency only"
ENOUGH = "frame-independent is enough"
UNCLEAR = "inconclusive"
SHORT_VERDICT = {NEEDS: "needs memory", CONSISTENCY: "smoothing enough", ENOUGH: "frame-only OK", UNCLEAR: "inconclusive"}
PRIMARY_CONSUMER = "tracking"
KNOWN_CONSUMERS = ("tracking", "safety", "intercept")


@dataclasses.dataclass
class Table:
    """A table of already formatted cell texts: a header row and body rows of the same width."""

    header: list[str]
    rows: list[list[str]]


@dataclasses.dataclass
class Figure:
    """One plot: a file stem (for plots/NAME.png), its PNG bytes and a caption."""

    name: str
    png: bytes
    caption: str


@dataclasses.dataclass
class Section:
    """A titled part of the report; `blocks` hold paragraphs (str), bullet lists (list[str]), Tables,
    Figures and nested Sections, rendered in order."""

    title: str
    blocks: list = dataclasses.field(default_factory=list)


def num(x: Any) -> float:
    """`x` as a float, NaN for None, booleans, strings and anything else that is not a number."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x)


def finite(x: Any) -> bool:
    """Whether `x` is a finite number."""
    return math.isfinite(num(x))


def fmt(x: Any, digits: int = 3) -> str:
    """A number to `digits` significant digits, DASH when missing or not finite."""
    v = num(x)
    if not math.isfinite(v):
        return DASH
    return f"{v:.{digits}g}"


def fmt_int(x: Any) -> str:
    """An integer count with thousands separators, DASH when missing."""
    v = num(x)
    return f"{int(round(v)):,}" if math.isfinite(v) else DASH


def fmt_us(x: Any) -> str:
    """A latency in microseconds: whole numbers from 100 µs up (1,040), 3 significant digits below."""
    v = num(x)
    if not math.isfinite(v):
        return DASH
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def fmt_pct(x: Any, sign: bool = True) -> str:
    """A fraction as a percentage (0.31 -> '+31%'), DASH when missing."""
    v = num(x)
    if not math.isfinite(v):
        return DASH
    return f"{100 * v:+.0f}%" if sign else f"{100 * v:.0f}%"


def fmt_duration(seconds: Any) -> str:
    """Seconds as '6 min 52 s' (or '41 s'), DASH when missing."""
    v = num(seconds)
    if not math.isfinite(v):
        return DASH
    if v < 60:
        return f"{v:.0f} s"
    minutes, s = divmod(int(round(v)), 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    return f"{minutes // 60} h {minutes % 60} min"


def text(x: Any) -> str:
    """A string field as text, DASH when missing or empty."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return DASH
    s = str(x)
    return s if s else DASH


def short_value(v: Any) -> str:
    """A knob value in short form (0.25, true, velocity)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def cells(results: dict) -> dict[str, dict]:
    """The results' cells as name -> dict, skipping entries that are not dicts."""
    raw = results.get("cells") if isinstance(results, dict) else None
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, dict)}


def models(cell: dict) -> dict[str, dict]:
    """A cell's models as name -> dict (empty for a cell that failed before training)."""
    raw = cell.get("models")
    return {str(k): v for k, v in raw.items() if isinstance(v, dict)} if isinstance(raw, dict) else {}


def metric(model: dict, key: str) -> float:
    """One metric of one model, NaN if absent."""
    m = model.get("metrics")
    return num(m.get(key)) if isinstance(m, dict) else math.nan


def need(cell: dict, consumer: str) -> dict:
    """The need-for-temporal-modeling entry of a cell and consumer ({} if absent)."""
    raw = cell.get("need")
    entry = raw.get(consumer) if isinstance(raw, dict) else None
    return entry if isinstance(entry, dict) else {}


def rank(cell: dict, consumer: str) -> dict:
    """The rank-agreement entry of a cell and consumer ({} if absent)."""
    raw = cell.get("rank_agreement")
    entry = raw.get(consumer) if isinstance(raw, dict) else None
    return entry if isinstance(entry, dict) else {}


def status(cell: dict) -> str:
    """'done', or the cell's error text."""
    return str(cell.get("status") or "done")


def is_error(cell: dict) -> bool:
    """Whether the cell ended in an error."""
    return status(cell).startswith("error")


def consumers(results: dict) -> list[str]:
    """Every consumer named by any cell: the known ones in their usual order, then the others."""
    seen: list[str] = []
    for cell in cells(results).values():
        seen += [c for c in cell_consumers(cell) if c not in seen]
    return [c for c in KNOWN_CONSUMERS if c in seen] + [c for c in seen if c not in KNOWN_CONSUMERS]


def cell_consumers(cell: dict) -> list[str]:
    """The consumers of one cell, in their usual order."""
    names = [c for c in (cell.get("consumers") or []) if isinstance(c, str)]
    if isinstance(cell.get("need"), dict):
        names += [c for c in cell["need"] if c not in names]
    return [c for c in KNOWN_CONSUMERS if c in names] + [c for c in names if c not in KNOWN_CONSUMERS]


def family_order(results: dict) -> list[str]:
    """The model families in the study's order, then any others found in the cells."""
    order = [f for f in (results.get("families") or []) if isinstance(f, str)]
    for cell in cells(results).values():
        for m in models(cell).values():
            fam = m.get("family")
            if isinstance(fam, str) and fam not in order:
                order.append(fam)
    return order


def model_names(results: dict) -> list[str]:
    """Every model name over all cells, plain families first in family order, wrapped variants after."""
    fams = family_order(results)
    names: list[str] = []
    for cell in cells(results).values():
        names += [n for n in models(cell) if n not in names]

    def key(n: str):
        return (n not in fams, fams.index(n) if n in fams else len(fams), n)

    return sorted(names, key=key)


def setting(cell: dict) -> str:
    """The scenario and its swept knobs in short: 'tracking · pixel_noise=0.25'."""
    if cell.get("logs"):  # a cell on recorded logs
        names = ", ".join(Path(str(x)).name for x in cell["logs"])
        tests = ", ".join(Path(str(x)).name for x in cell.get("test_logs") or [])
        return f"recorded · {names}" + (f" → tested on {tests}" if tests else "")
    swept = cell.get("swept") if isinstance(cell.get("swept"), dict) else {}
    knobs = ", ".join(f"{k}={short_value(v)}" for k, v in swept.items())
    return f"{text(cell.get('scenario'))} · {knobs}" if knobs else f"{text(cell.get('scenario'))} (defaults)"


def _sortable(v: Any) -> tuple:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def ordered_cells(results: dict) -> list[tuple[str, str, dict]]:
    """(scenario, cell name, cell) grouped by scenario (in first-seen order) and, within a group,
    ordered by how many knobs differ from the group's baseline and then by the swept values."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for name, cell in cells(results).items():
        groups.setdefault(text(cell.get("scenario")), []).append((name, cell))
    out = []
    for scen, members in groups.items():
        swept = [c.get("swept") if isinstance(c.get("swept"), dict) else {} for _, c in members]
        varying = sorted({k for s in swept for k in s})

        def key(item, varying=varying):
            _, c = item
            s = c.get("swept") if isinstance(c.get("swept"), dict) else {}
            knobs = c.get("knobs") if isinstance(c.get("knobs"), dict) else {}
            values = tuple(_sortable(s.get(k, knobs.get(k, 0))) for k in varying)
            return (len(s), values)

        out += [(scen, n, c) for n, c in sorted(members, key=key)]
    return out


def claims_table(results: dict) -> Table:
    """Claim, verdict and evidence, one row per claim."""
    rows = []
    for c in results.get("claims") or []:
        if isinstance(c, dict):
            claim = text(c.get("claim"))
            cid = c.get("id")
            rows.append([f"{cid}. {claim}" if cid is not None else claim, text(c.get("verdict")), text(c.get("evidence"))])
    return Table(["claim", "verdict", "evidence"], rows)


def headline(results: dict) -> Table:
    """One row per cell: setting, oracle and learned accuracy gains, memory and consistency gains, verdicts."""
    cons = consumers(results) or [PRIMARY_CONSUMER]
    p = PRIMARY_CONSUMER if PRIMARY_CONSUMER in cons else cons[0]
    header = ["cell", "setting", "oracle gain", "learned gain (family)", f"memory gain, {p} [95% CI]",
              f"smoothing gain, {p} [95% CI]"] + cons
    rows = []
    for _, name, cell in ordered_cells(results):
        where = setting(cell)
        if is_error(cell):
            where += f" — {status(cell)[:80]}"
        n = need(cell, p)
        acc = cell.get("accuracy_gain") if isinstance(cell.get("accuracy_gain"), dict) else {}
        learned = f"{fmt_pct(acc.get('learned'))} ({text(acc.get('family'))})" if finite(acc.get("learned")) else DASH
        rows.append([name + role_mark(cell), where, fmt_pct(acc.get("oracle")) if finite(acc.get("oracle")) else DASH, learned,
                     gap_text(n.get("memory") or {}), gap_text(n.get("consistency") or {})]
                    + [short_verdict(need(cell, c).get("verdict")) for c in cons])
    return Table(header, rows)


def role_mark(cell: dict) -> str:
    """' (control −)', ' (control +)', ' (experiment)' or ''."""
    role = cell.get("role")
    return {"negative": " (control −)", "positive": " (control +)", "experiment": " (experiment)"}.get(role, "")


def controls_table(results: dict) -> Table:
    """One row per control cell: what it must show, what it showed, pass or fail."""
    rows = []
    for name, c in (results.get("controls") or {}).items():
        if not isinstance(c, dict):
            continue
        ci = c.get("ci") or [None, None]
        gain = f"{fmt_pct(c.get('memory_gain'))} [{fmt_pct(ci[0])}, {fmt_pct(ci[1])}]" if finite(c.get("memory_gain")) else DASH
        frac = f"{num(c.get('fraction_of_oracle')):.2f}" if finite(c.get("fraction_of_oracle")) else DASH
        rows.append([name, text(c.get("kind")), text(c.get("expect")), text(c.get("memory_verdict")), gain, text(c.get("family")),
                     fmt_pct(c.get("learned_gain")) if finite(c.get("learned_gain")) else DASH,
                     fmt_pct(c.get("oracle_gain")) if finite(c.get("oracle_gain")) else DASH, frac, text(c.get("status")).upper()])
    header = ["cell", "control", "must show", "memory verdict", "memory gain [95% CI]", "family", "learned accuracy gain",
              "oracle gain", "learned / oracle", "status"]
    return Table(header, rows)


def gap_text(n: dict) -> str:
    """'+31% [+20%, +40%]' from a gain entry, DASH when missing."""
    if not finite(n.get("gain")):
        return DASH
    ci = f" [{fmt_pct(n.get('ci_low'))}, {fmt_pct(n.get('ci_high'))}]" if finite(n.get("ci_low")) else ""
    return fmt_pct(n.get("gain")) + ci


def short_verdict(v: Any) -> str:
    """The compact verdict label, DASH when missing."""
    return SHORT_VERDICT.get(v, text(v)) if v is not None else DASH


def need_table(results: dict, consumer: str) -> Table:
    """Per cell for one consumer: the family, its twin, full and smoothed-twin costs, the three gains, lag, verdict."""
    rows = []
    for _, name, cell in ordered_cells(results):
        n = need(cell, consumer)
        if not n:
            continue
        m, c, b = n.get("memory") or {}, n.get("consistency") or {}, n.get("beyond_smoothing") or {}
        lag = n.get("lag_s") if isinstance(n.get("lag_s"), dict) else {}
        lag_text = f"{fmt(lag.get('twin'), 2)} → {fmt(lag.get('twin_smoothed'), 2)}"
        rows.append([name + role_mark(cell), text(n.get("family")), fmt(m.get("cost_base")), fmt(m.get("cost_treated")),
                     gap_text(m), fmt(c.get("cost_treated")), gap_text(c), gap_text(b), lag_text,
                     fmt(n.get("framewise_cost")), text(n.get("verdict")) + (f" ({n['note']})" if n.get("note") else "")])
    header = ["cell", "family", "twin cost", "full cost", "memory gain", "smoothed twin cost", "smoothing gain",
              "memory beyond smoothing", "lag s twin → smoothed", "framewise cost", "verdict"]
    return Table(header, rows)


def oracle_table(results: dict) -> Table:
    """Per cell with an oracle: its kind, MSEs with and without memory, oracle and learned accuracy gains."""
    rows = []
    for _, name, cell in ordered_cells(results):
        o = cell.get("oracle")
        if not isinstance(o, dict):
            continue
        acc = cell.get("accuracy_gain") if isinstance(cell.get("accuracy_gain"), dict) else {}
        flag = cell.get("oracle_disagrees")
        rows.append([name + role_mark(cell), text(o.get("kind")), fmt(o.get("mse_memoryless")), fmt(o.get("mse_memory")),
                     fmt_pct(o.get("gain")), f"{fmt_pct(acc.get('learned'))} ({text(acc.get('family'))})" if finite(acc.get("learned")) else DASH,
                     fmt(acc.get("fraction_of_oracle"), 2) if finite(acc.get("fraction_of_oracle")) else DASH,
                     f"DISAGREES: {flag}" if flag else "agrees"])
    header = ["cell", "oracle", "MSE memoryless", "MSE with memory", "oracle gain", "learned gain (family)", "learned / oracle", "learned verdict vs oracle"]
    return Table(header, rows)


def rank_table(results: dict) -> tuple[Table, list[str]]:
    """Kendall tau between RMSE rank and consumer-cost rank per cell and consumer, and the
    'cell / consumer: RMSE picks X, consumer picks Y' lines where the picks differ."""
    rows, differ = [], []
    for _, name, cell in ordered_cells(results):
        for c in cell_consumers(cell):
            r = rank(cell, c)
            if not r:
                continue
            agree = r.get("picks_agree")
            mark = "yes" if agree is True else ("no" if agree is False else DASH)
            rows.append([name, c, fmt(r.get("kendall_tau"), 2), fmt(r.get("p_value"), 2), text(r.get("rmse_pick")),
                         text(r.get("consumer_pick")), mark, fmt_int(r.get("n_models"))])
            if agree is False:
                differ.append(f"{name} / {c}: RMSE picks {text(r.get('rmse_pick'))}, "
                              f"the consumer's cost picks {text(r.get('consumer_pick'))}")
    header = ["cell", "consumer", "Kendall τ", "p", "RMSE pick", "consumer pick", "agree", "models"]
    return Table(header, rows), differ


def details_table(cell: dict) -> Table:
    """Every model of one cell: size, training time, accuracy, calibration, consistency, costs, latency."""
    cons = cell_consumers(cell)
    ms = models(cell)
    has_ratio = any(finite(metric(m, "mse_ratio")) for m in ms.values())
    header = ["model", "params", "train s", "RMSE", "NLL", "cov90", "flicker", "TVR", "lag s"]
    header += ["MSE/opt"] if has_ratio else []
    header += [f"{c} cost" for c in cons] + ["latency med µs", "p99 µs"]
    rows = []
    for name, m in ms.items():
        wrapper = m.get("wrapper")
        label = f"{name} ({wrapper})" if wrapper and str(wrapper) not in name else name
        if m.get("oracle_system"):  # runs the log's own stored system: the oracle, not a learned model
            label += " (memoryless oracle: the log's system)" if m.get("twin") else " (oracle: the log's system)"
        row = [label, fmt_int(m.get("num_parameters")), fmt(m.get("train_seconds")), fmt(metric(m, "rmse")),
               fmt(metric(m, "nll")), fmt(metric(m, "coverage_90"), 2), fmt(metric(m, "flicker")),
               fmt(metric(m, "tvr")), fmt(metric(m, "lag_s"), 2)]
        row += [fmt(metric(m, "mse_ratio"))] if has_ratio else []
        row += [fmt(metric(m, f"{c}.cost")) for c in cons]
        row += [fmt_us(metric(m, "latency_median_us")), fmt_us(metric(m, "latency_p99_us"))]
        rows.append(row)
    return Table(header, rows)


def cell_summary(name: str, cell: dict) -> str:
    """One line describing a cell: setting, target, inputs, episodes, seeds and status."""
    eps = cell.get("episodes") if isinstance(cell.get("episodes"), dict) else {}
    split = "/".join(fmt_int(eps.get(k)) for k in ("train", "val", "test")) if eps else DASH
    fields = ", ".join(map(str, cell.get("target_fields") or [])) or DASH
    inputs = ", ".join(map(str, cell.get("inputs") or [])) or DASH
    seeds = ", ".join(map(str, cell.get("seeds") or [])) or DASH
    return (f"{setting(cell)}; target {text(cell.get('target'))} ({fields}); inputs {inputs}; "
            f"episodes train/val/test {split}; seeds {seeds}; status: {status(cell)}.")


def join_nonempty(parts: Iterable[str], sep: str = " · ") -> str:
    """The non-empty parts joined by `sep`."""
    return sep.join(p for p in parts if p)
