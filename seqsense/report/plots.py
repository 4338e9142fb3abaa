"""The report's plots, drawn with matplotlib's object API on the Agg canvas and returned as PNG bytes.

No pyplot: figures are built from `matplotlib.figure.Figure`, so drawing a report neither changes
the process's backend nor keeps figures alive. Each family keeps one colour and one marker in
every plot; a wrapped variant (e.g. `framewise+ema`) takes its family's colour with a hollow marker.
A plot with nothing to draw returns None and the report skips it.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FuncFormatter, NullFormatter

from seqsense.report import tables as tb

DPI = 100
FAMILY_COLORS = {"framewise": "#d62728", "gp": "#2ca02c", "rnn": "#1f77b4", "transformer": "#9467bd", "kalman": "#ff7f0e"}
FAMILY_MARKERS = {"framewise": "o", "gp": "s", "rnn": "^", "transformer": "D", "kalman": "v"}
_SPARE_COLORS = ["#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
_SPARE_MARKERS = ["P", "X", "*", "h", "<"]
VERDICT_COLORS = {tb.NEEDS: "#d95f02", tb.CONSISTENCY: "#7570b3", tb.ENOUGH: "#1b9e77", tb.UNCLEAR: "#7f7f7f"}


class Palette:
    """Owns the colour and marker of each model family, fixed for the whole report."""

    def __init__(self, families: list[str]):
        self.color, self.marker = {}, {}
        spare = 0
        for fam in families:
            if fam in FAMILY_COLORS:
                self.color[fam], self.marker[fam] = FAMILY_COLORS[fam], FAMILY_MARKERS[fam]
            else:
                self.color[fam] = _SPARE_COLORS[spare % len(_SPARE_COLORS)]
                self.marker[fam] = _SPARE_MARKERS[spare % len(_SPARE_MARKERS)]
                spare += 1

    def of(self, family: str) -> tuple[str, str]:
        """(colour, marker) of a family; grey circle for one never seen."""
        return self.color.get(family, "#555555"), self.marker.get(family, "o")


def to_png(fig: MplFigure) -> bytes:
    """The figure as PNG bytes at the report's resolution."""
    buf = io.BytesIO()
    # zlib level 1: the same pixels, about a third of the default level's encoding time, slightly larger files
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def _minor_label(v: float, _pos) -> str:
    """Label the 2× and 5× minor ticks of a log axis so a span under two decades still reads."""
    mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9) if v > 0 else 0.0
    return f"{v:g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def _plain_log(axis, values) -> None:
    """Log-scale ticks labelled as plain numbers (0.02, 100); the 2× and 5× minor ticks labelled
    too when the axis spans under two decades."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    v = [x for x in values if math.isfinite(x) and x > 0]
    narrow = bool(v) and max(v) / min(v) < 100
    axis.set_minor_formatter(FuncFormatter(_minor_label) if narrow else NullFormatter())


def _family(model_name: str, model: dict) -> str:
    fam = model.get("family")
    return fam if isinstance(fam, str) else model_name.split("+")[0]


def _wrapped(model_name: str, model: dict) -> bool:
    return bool(model.get("wrapper")) or "+" in model_name


def need_plot(results: dict, consumer: str) -> bytes | None:
    """Memory gain (twin → full) and smoothing gain (twin → smoothed twin) with CIs per cell for one
    consumer, cells grouped by scenario, band at ±margin, colour by the cell's verdict."""
    pts = [(scen, name, tb.need(cell, consumer)) for scen, name, cell in tb.ordered_cells(results)]
    pts = [(s, n, d) for s, n, d in pts if tb.finite((d.get("memory") or {}).get("gain"))]
    if not pts:
        return None
    margin = tb.num(results.get("margin"))
    margin = margin if math.isfinite(margin) else 0.05
    fig = MplFigure(figsize=(max(6.0, 0.6 * len(pts) + 2.0), 3.8))
    ax = fig.subplots()
    ax.axhspan(-margin, margin, color="#dddddd", zorder=0, label=f"±margin ({margin:g})")
    ax.axhline(0.0, color="#999999", lw=0.8, zorder=1)
    seen = set()
    for i, (_, _, d) in enumerate(pts):
        v = d.get("verdict")
        color = VERDICT_COLORS.get(v, "#333333")
        for dx, key, marker in ((-0.15, "memory", "o"), (0.15, "consistency", "s")):
            g = d.get(key) or {}
            y, lo, hi = tb.num(g.get("gain")), tb.num(g.get("ci_low")), tb.num(g.get("ci_high"))
            if not math.isfinite(y):
                continue
            if math.isfinite(lo) and math.isfinite(hi):
                ax.errorbar([i + dx], [y], yerr=[[max(y - lo, 0.0)], [max(hi - y, 0.0)]], fmt="none", ecolor=color, capsize=3, zorder=2)
            label = f"{key} gain" if (key, None) not in seen else None
            seen.add((key, None))
            ax.plot([i + dx], [y], marker, color=color, mfc=color if key == "memory" else "white", zorder=3, label=label)
        if v not in seen:
            ax.plot([], [], "o", color=color, label=v)
            seen.add(v)
    prev, n_groups = None, 0
    for i, (scen, _, _) in enumerate(pts):
        if scen != prev:
            if i > 0:
                ax.axvline(i - 0.5, color="#bbbbbb", lw=0.8, ls=":")
            y = 1.01 + 0.06 * (n_groups % 2)  # alternate heights so neighbouring names don't overlap
            ax.text(i - 0.4, y, scen, transform=ax.get_xaxis_transform(), fontsize=8, va="bottom", color="#444444")
            prev, n_groups = scen, n_groups + 1
    ax.set_xticks(range(len(pts)))
    ax.set_xticklabels([n for _, n, _ in pts], rotation=35, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(pts) - 0.4)
    ax.set_ylabel("gain (fraction of the twin's cost)")
    ax.set_title(f"Memory vs smoothing — {consumer} consumer (95% CI)", pad=28)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return to_png(fig)


def accuracy_consistency_plot(results: dict, palette: Palette) -> bytes | None:
    """RMSE against flicker and against lag, one point per (cell, model), marker and colour by family."""
    pts = []
    for _, _, cell in tb.ordered_cells(results):
        for name, m in tb.models(cell).items():
            pts.append((_family(name, m), _wrapped(name, m), tb.metric(m, "rmse"), tb.metric(m, "flicker"), tb.metric(m, "lag_s")))
    pts = [p for p in pts if math.isfinite(p[2])]
    if not pts:
        return None
    fig = MplFigure(figsize=(10.0, 4.0))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, k, xlabel in ((axes[0], 3, "flicker (target units per tick)"), (axes[1], 4, "lag (s)")):
        groups: dict[tuple[str, bool], list[tuple[float, float]]] = {}  # one scatter per family and wrapping
        for fam, wrapped, rmse, *rest in pts:
            if math.isfinite(rest[k - 3]):
                groups.setdefault((fam, wrapped), []).append((rest[k - 3], rmse))
        for (fam, wrapped), xy in groups.items():
            color, marker = palette.of(fam)
            ax.scatter([p[0] for p in xy], [p[1] for p in xy], c="none" if wrapped else color, edgecolors=color, marker=marker,
                       s=30, label=f"{fam} (wrapped)" if wrapped else fam, alpha=0.85)
        xs = [p[k] for p in pts if math.isfinite(p[k])]
        if xs and min(xs) > 0 and k == 3:
            ax.set_xscale("log")
            _plain_log(ax.xaxis, xs)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    if min(p[2] for p in pts) > 0:
        axes[0].set_yscale("log")
        _plain_log(axes[0].yaxis, [p[2] for p in pts])
    axes[0].set_ylabel("RMSE (target units)")
    axes[0].set_title("Accuracy vs jitter")
    axes[1].set_title("Accuracy vs lag")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[1].legend(handles, labels, fontsize=7, loc="best")
    return to_png(fig)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index runs where `mask` is true."""
    m = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(edges[0::2], edges[1::2]))


def _first_field(series) -> np.ndarray | None:
    """The first target field of a (T,) or (T, D) series as floats (None/NaN-tolerant), or None."""
    try:
        arr = np.array([[np.nan if v is None else v for v in row] if isinstance(row, (list, tuple)) else
                        [np.nan if row is None else row] for row in series], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr[:, 0] if arr.ndim == 2 and arr.shape[1] > 0 else None


def trajectory_plot(name: str, cell: dict, palette: Palette) -> bytes | None:
    """Truth and the decisive models' predictions (the verdict's family, its twin, the smoothed twin,
    framewise) of the first target field in the cell's example episode; occlusions and distractor
    intervals shaded, slide cuts drawn as vertical lines."""
    ex = cell.get("example")
    if not isinstance(ex, dict) or not isinstance(ex.get("t_s"), list) or not ex["t_s"]:
        return None
    t = np.array([tb.num(v) for v in ex["t_s"]])
    truth = _first_field(ex.get("truth") or [])
    if truth is None or len(truth) != len(t):
        return None
    fields = cell.get("target_fields") or []
    field = str(fields[0]) if fields else "field 0"
    fig = MplFigure(figsize=(8.0, 2.8))
    ax = fig.subplots()
    occ = ex.get("occluded")
    if isinstance(occ, list) and len(occ) == len(t):
        mask = np.array([v is True or (tb.finite(v) and tb.num(v) > 0) for v in occ])
        for i, (a, b) in enumerate(_runs(mask)):
            ax.axvspan(t[a], t[min(b, len(t) - 1)], color="#cccccc", alpha=0.6, lw=0, label="occluded" if i == 0 else None)
    cuts = [tb.num(c) for c in (ex.get("cuts_s") or []) if tb.finite(c)]
    for i, c in enumerate(cuts):
        ax.axvline(c, color="#888888", ls="--", lw=0.8, label="cut" if i == 0 else None)
    ax.plot(t, truth, color="black", lw=1.8, label="truth")
    dis = ex.get("distractor")
    if isinstance(dis, list) and len(dis) == len(t):
        mask = np.array([tb.finite(v) and tb.num(v) > 0 for v in dis])
        for i, (a, b) in enumerate(_runs(mask)):
            ax.axvspan(t[a], t[min(b, len(t) - 1)], color="#f4c7a1", alpha=0.5, lw=0, label="distractor shown" if i == 0 else None)
    models = tb.models(cell)
    preds = ex.get("predictions") if isinstance(ex.get("predictions"), dict) else {}
    family = tb.need(cell, tb.PRIMARY_CONSUMER).get("family")
    if family:  # the decisive comparison: the family, its twin, the smoothed twin, and framewise for reference
        keep = {family, f"{family}-twin", f"{family}-twin+ema", "framewise"}
        preds = {k: v for k, v in preds.items() if k in keep}
    for mname, series in preds.items():
        y = _first_field(series or [])
        if y is None or len(y) != len(t):
            continue
        m = models.get(mname, {})
        color, _ = palette.of(_family(mname, m))
        style = "--" if _wrapped(mname, m) else (":" if m.get("twin") or mname.endswith("-twin") else "-")
        ax.plot(t, y, color=color, lw=1.3 if style == ":" else 1.0, ls=style, alpha=0.9, label=mname)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"{field} ({tb.text(cell.get('target'))})", fontsize=8)
    ax.set_title(f"{name}: episode {tb.text(ex.get('episode'))}", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    return to_png(fig)


def latency_plot(results: dict, palette: Palette) -> bytes | None:
    """Median and p99 per-step latency per model (median over cells), log scale."""
    rows = []
    for mname in tb.model_names(results):
        med, p99, fam = [], [], mname
        for cell in tb.cells(results).values():
            m = tb.models(cell).get(mname)
            if m is None:
                continue
            fam = _family(mname, m)
            med.append(tb.metric(m, "latency_median_us"))
            p99.append(tb.metric(m, "latency_p99_us"))
        med = [v for v in med if math.isfinite(v) and v > 0]
        p99 = [v for v in p99 if math.isfinite(v) and v > 0]
        if med or p99:
            rows.append((mname, fam, float(np.median(med)) if med else math.nan, float(np.median(p99)) if p99 else math.nan))
    if not rows:
        return None
    fig = MplFigure(figsize=(max(5.0, 0.9 * len(rows) + 1.5), 3.5))
    ax = fig.subplots()
    x = np.arange(len(rows))
    w = 0.38
    for i, (mname, fam, med, p99) in enumerate(rows):
        color, _ = palette.of(fam)
        if math.isfinite(med):
            ax.bar(x[i] - w / 2, med, w, color=color, label="median" if i == 0 else None)
        if math.isfinite(p99):
            ax.bar(x[i] + w / 2, p99, w, color=color, alpha=0.45, hatch="//", edgecolor=color, label="p99" if i == 0 else None)
    ax.set_yscale("log")
    _plain_log(ax.yaxis, [v for r in rows for v in r[2:]])
    ax.set_xticks(x)
    ax.set_xticklabels([r[0] for r in rows], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("per-step latency (µs)")
    ax.set_title("Streaming latency per model (median over cells)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3, which="both")
    return to_png(fig)


def optimality_plot(results: dict, palette: Palette) -> bytes | None:
    """MSE / optimal-filter MSE per model on the cells that store an optimum, with lines at 1.0 and 1.1."""
    data = []
    for _, name, cell in tb.ordered_cells(results):
        ratios = [(mname, _family(mname, m), tb.metric(m, "mse_ratio")) for mname, m in tb.models(cell).items()]
        ratios = [r for r in ratios if math.isfinite(r[2])]
        if ratios:
            data.append((name, ratios))
    if not data:
        return None
    names = tb.model_names(results)
    n_models = max(len(r) for _, r in data)
    fig = MplFigure(figsize=(max(5.0, len(data) * (0.35 * n_models + 0.8) + 1.5), 3.6))
    ax = fig.subplots()
    w = 0.8 / n_models
    seen = set()
    for ci, (_, ratios) in enumerate(data):
        ratios = sorted(ratios, key=lambda r: names.index(r[0]) if r[0] in names else len(names))
        for j, (mname, fam, r) in enumerate(ratios):
            color, _ = palette.of(fam)
            ax.bar(ci - 0.4 + w * (j + 0.5), r, w, color=color, hatch="//" if "+" in mname else None,
                   edgecolor="white", label=mname if mname not in seen else None)
            seen.add(mname)
    ax.axhline(1.0, color="black", lw=1.0, label="optimal (1.0)")
    ax.axhline(1.1, color="black", lw=0.8, ls="--", label="within 10% (1.1)")
    top = max(r for _, rs in data for _, _, r in rs)
    if top > 20:
        ax.set_yscale("log")
        _plain_log(ax.yaxis, [r for _, rs in data for _, _, r in rs])
    ax.set_xticks(range(len(data)))
    ax.set_xticklabels([n for n, _ in data], fontsize=8)
    ax.set_ylabel("MSE / optimal-filter MSE")
    ax.set_title("Optimality ratio where the optimal filter is known")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)
