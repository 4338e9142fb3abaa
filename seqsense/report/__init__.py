"""The study's report: `index.html` (self-contained) and `summary.md` (+ plots/*.png) from a results dict.

`write_report(results, out_dir)` builds one `Section` tree (tables.py for the tables, plots.py for
the figures) and renders it twice, so both files say the same thing; every file is written through
a temporary file and `os.replace`, so a reader never sees a half-written one. `headline_table` is
the compact per-cell table also used for the README (`scripts/readme_table.py`).
"""

from __future__ import annotations

from pathlib import Path

from seqsense.errors import SeqsenseError
from seqsense.fileio import write_atomic
from seqsense.report import tables as tb
from seqsense.report.html import render_html
from seqsense.report.markdown import render_markdown, table_md

HEADLINE_START = "<!-- headline:start -->"
HEADLINE_END = "<!-- headline:end -->"

__all__ = ["write_report", "headline_table", "headline_block", "replace_marked_block", "build_sections", "HEADLINE_START",
           "HEADLINE_END"]


def headline_table(results: dict) -> str:
    """The per-cell headline as a Markdown table (one row per cell)."""
    _check_results(results)
    return table_md(tb.headline(results))


def headline_block(results: dict) -> str:
    """The README's generated block: how the run was made, the controls with their numbers, the
    headline table and the claims' verdicts — every number read from `results`."""
    _check_results(results)
    m = results.get("machine") if isinstance(results.get("machine"), dict) else {}
    budget = results.get("budget") if isinstance(results.get("budget"), dict) else {}
    run = (f"Generated from `results.json` of `seqsense study --{tb.text(results.get('recipe'))}` "
           f"({tb.fmt_duration(results.get('elapsed_s'))} on {tb.fmt_int(m.get('cores'))} cores, {tb.text(m.get('cpu'))}; "
           f"{tb.fmt_int(budget.get('steps'))} optimizer steps per model and twin, {tb.fmt_int(budget.get('encoder_steps'))} "
           f"for each cell's frame encoder; seeds {', '.join(map(str, results.get('seeds') or [])) or tb.DASH}).")
    lines = [run, ""]
    controls = results.get("controls") if isinstance(results.get("controls"), dict) else {}
    if controls:
        passed = sum(isinstance(c, dict) and c.get("status") == "pass" for c in controls.values())
        lines.append(f"**Controls: {passed} of {len(controls)} passed** (tracking controller; margin {tb.fmt(results.get('margin'))}):")
        for name, c in controls.items():
            if not isinstance(c, dict):
                continue
            ci = c.get("ci") or [None, None]
            part = (f"- `{name}` ({tb.text(c.get('kind'))}): **{tb.text(c.get('status')).upper()}** — memory verdict "
                    f"*{tb.text(c.get('memory_verdict'))}*, memory gain {tb.fmt_pct(c.get('memory_gain'))} "
                    f"[{tb.fmt_pct(ci[0])}, {tb.fmt_pct(ci[1])}] ({tb.text(c.get('family'))} against its twin)")
            if tb.finite(c.get("oracle_gain")):
                part += (f"; learned accuracy gain {tb.fmt_pct(c.get('learned_gain'))} against the oracle's "
                         f"{tb.fmt_pct(c.get('oracle_gain'))}")
                if tb.finite(c.get("fraction_of_oracle")):
                    part += f" ({tb.num(c.get('fraction_of_oracle')):.2f} of it)"
            lines.append(part + f"; must show {tb.text(c.get('expect'))}.")
        lines.append("")
    lines += [table_md(tb.headline(results)).strip(), ""]
    claims = [c for c in results.get("claims") or [] if isinstance(c, dict)]
    if claims:
        lines.append("**The claims:**")
        lines += [f"{c.get('id')}. {tb.text(c.get('claim'))} — **{tb.text(c.get('verdict'))}**" for c in claims]
    return "\n".join(lines).strip() + "\n"


def replace_marked_block(text: str, block: str, where: str = "README") -> str:
    """`text` with everything between the headline markers replaced by `block` (ValueError if the
    markers are missing, repeated or out of order)."""
    n_start, n_end = text.count(HEADLINE_START), text.count(HEADLINE_END)
    if n_start != 1 or n_end != 1:
        raise ValueError(
            f"{where}: expected exactly one '{HEADLINE_START}' and one '{HEADLINE_END}' marker; found "
            f"{n_start} and {n_end}. Add the two markers on their own lines where the table should go.")
    i, j = text.index(HEADLINE_START), text.index(HEADLINE_END)
    if j < i:
        raise ValueError(f"{where}: '{HEADLINE_END}' comes before '{HEADLINE_START}'; swap the markers.")
    head = text[: i + len(HEADLINE_START)]
    return f"{head}\n{block.strip()}\n{text[j:]}"


def _check_results(results) -> None:
    if not isinstance(results, dict):
        raise TypeError(f"results must be a dict as written by `seqsense study`; got {type(results).__name__}.")
    if not isinstance(results.get("cells", {}), dict):
        raise TypeError(f"results['cells'] must map cell names to dicts; got {type(results['cells']).__name__}.")


def _title(results: dict) -> tuple[str, str]:
    """The report title and its meta line (version, machine, elapsed time, seed, date)."""
    title = f"seqsense study: {tb.text(results.get('recipe'))}"
    m = results.get("machine") if isinstance(results.get("machine"), dict) else {}
    machine = tb.join_nonempty([
        tb.text(m.get("cpu")) if m.get("cpu") else "",
        f"{m['cores']} cores" if m.get("cores") is not None else "",
        f"torch {m['torch']}" if m.get("torch") else "",
        f"device {m['device']}" if m.get("device") else "",
    ], ", ")
    meta = tb.join_nonempty([
        f"seqsense {tb.text(results.get('seqsense_version'))}",
        f"machine: {machine or tb.DASH}",
        f"elapsed {tb.fmt_duration(results.get('elapsed_s'))}",
        f"cell compute {tb.fmt_duration(results['compute_s'])} (resumed cells included)" if results.get("compute_s") else "",
        f"seed {tb.text(results.get('seed'))}",
        f"created {results['created_utc']}" if results.get("created_utc") else "",
    ])
    return title, meta


def _fig(name: str, png: bytes | None, caption: str) -> list:
    return [tb.Figure(name, png, caption)] if png else []


def _safe_names(names: list[str]) -> dict[str, str]:
    """Each name reduced to characters safe in a file name, made unique with a numeric suffix."""
    out: dict[str, str] = {}
    for name in names:
        base = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "cell"
        safe, k = base, 2
        while safe in out.values():
            safe, k = f"{base}_{k}", k + 1
        out[name] = safe
    return out


def build_sections(results: dict) -> list[tb.Section]:
    """The report's sections, in order, with tables formatted and plots drawn."""
    from seqsense.report import plots  # matplotlib loads only when plots are drawn, not for headline_table

    _check_results(results)
    palette = plots.Palette(tb.family_order(results))
    cell_list = tb.ordered_cells(results)
    margin = tb.num(results.get("margin"))
    cell_files, consumer_files = _safe_names([n for _, n, _ in cell_list]), _safe_names(tb.consumers(results))
    sections = []

    controls = tb.controls_table(results)
    if controls.rows:
        verdict = "every control passed" if results.get("controls_pass") else "a control FAILED: read the verdicts below with care"
        sections.append(tb.Section("Controls", [
            f"Cells whose answer is known, checked before anything else ({verdict}). The negative control (a clean "
            "slideshow: each frame shows its answer) must need no memory; the positive controls (linear-Gaussian, "
            "occlusion) must need memory, with a learned accuracy gain of at least half the oracle's. Verdicts are "
            "the tracking controller's, which every cell has.", controls]))

    claims = tb.claims_table(results)
    sections.append(tb.Section("The claims", [
        "Each claim from the debate that motivated the study, with the verdict the measurements give.",
        claims if claims.rows else "No claims were evaluated in this run."]))

    sections.append(tb.Section("Headline", [
        "Per cell: the oracle's accuracy gain from memory (from the generator's truth, no learning), the learned "
        "accuracy gain 1 − MSE(full) / MSE(twin) of the most accurate learned family, and for the tracking "
        "controller the memory gain (the family's memoryless twin → the full model, same architecture, data, steps "
        "and seed) and the smoothing gain (the twin → the twin behind an exponential smoother tuned on validation "
        f"episodes), relative cost changes with 95% paired bootstrap CIs; then the verdict per consumer (margin {tb.fmt(margin)}).",
        tb.headline(results)]))

    oracle = tb.oracle_table(results)
    if oracle.rows:
        sections.append(tb.Section("Oracle gaps", [
            "Where the scenario admits it, the best estimator with memory against the best memoryless one, both "
            "computed from the generator's truth with no learning. A learned verdict that contradicts its oracle is flagged.",
            oracle]))

    need_blocks: list = [
        "Memory gain > 0: the full model is cheaper than its own memoryless twin by that fraction of the twin's cost "
        "(the family is the one whose full model is cheapest, re-picked in every bootstrap replicate). Smoothing gain: "
        "the same twin behind its tuned smoother. The grey band is ±margin. Needs memory: the memory gain's CI is above "
        "the margin and smoothing the twin does not match the full model; needs consistency only: smoothing the twin "
        "clears the margin and memory adds nothing beyond it; frame-independent is enough: both CIs are below the margin."]
    for c in tb.consumers(results):
        need_blocks.append(tb.Section(f"{c} consumer", _fig(
            f"need_{consumer_files[c]}", plots.need_plot(results, c),
            f"{c} consumer: memory gain (filled) and smoothing gain (hollow) per cell with 95% CI.") + [tb.need_table(results, c)]))
    sections.append(tb.Section("Memory or consistency?", need_blocks))

    sections.append(tb.Section("Accuracy vs consistency", _fig(
        "accuracy_consistency", plots.accuracy_consistency_plot(results, palette),
        "RMSE against flicker and against lag, one point per (cell, model); hollow markers are wrapped variants.")
        or ["No model has an RMSE to plot."]))

    traj: list = ["Truth and the predictions of the first target field in one held-out episode, read from the cell's "
                  "saved predictions (predictions.h5): the family the tracking verdict rests on, its memoryless twin, "
                  "the twin behind its smoother, and framewise; shaded grey: occluded, orange: a distractor in view, "
                  "dashed vertical lines: slide cuts."]
    for _, name, cell in cell_list:
        figs = _fig(f"trajectory_{cell_files[name]}", plots.trajectory_plot(name, cell, palette), f"{name}: example trajectory.")
        traj.append(tb.Section(name, figs or [f"No example trajectory ({tb.status(cell)})."]))
    sections.append(tb.Section("Example trajectories", traj))

    sections.append(tb.Section("Latency per model", _fig(
        "latency", plots.latency_plot(results, palette),
        "Per-step latency of the streaming predictor: median (solid) and p99 (hatched), median over cells.")
        or ["No latency was measured."]))

    sections.append(tb.Section("Optimality on linear-Gaussian cells", _fig(
        "optimality", plots.optimality_plot(results, palette),
        "MSE relative to the optimal filter's MSE (1.0 = optimal; dashed: within 10%).")
        or ["No cell stores an optimal filter to compare with."]))

    ranks, differ = tb.rank_table(results)
    rank_blocks: list = [
        "Does per-frame accuracy rank the models the way the consumer's cost does? Kendall τ between the RMSE "
        "ranking and the consumer-cost ranking (1 = same order).", ranks]
    if differ:
        rank_blocks += [f"RMSE picks a different model than the consumer in {len(differ)} of {len(ranks.rows)} "
                        "(cell, consumer) pairs:", differ]
    elif ranks.rows:
        rank_blocks.append("RMSE and the consumer's cost pick the same model in every (cell, consumer) pair.")
    sections.append(tb.Section("Rank agreement", rank_blocks))

    details: list = ["Every model per cell: parameters, training seconds, accuracy, calibration (90% coverage), "
                     "consistency (flicker, TVR, lag), consumer costs (lower is better) and per-step latency. "
                     "`-twin`: the family's memoryless twin; `+ema`: behind its smoother (time constant per consumer, "
                     "tuned on validation episodes). On camera cells with cached features the latency is that of the "
                     "model on the frame encoder's features (the encoder's cost is shared by every model)."]
    for _, name, cell in cell_list:
        table = tb.details_table(cell)
        details.append(tb.Section(name, [tb.cell_summary(name, cell), table if table.rows else "No model was evaluated."]))
    sections.append(tb.Section("Per-cell details", details))
    return sections


def _figures(blocks: list) -> list[tb.Figure]:
    out = []
    for b in blocks:
        if isinstance(b, tb.Figure):
            out.append(b)
        elif isinstance(b, tb.Section):
            out += _figures(b.blocks)
    return out


def write_report(results: dict, out_dir: Path) -> None:
    """Write index.html (self-contained), summary.md and plots/*.png for `results` into `out_dir`."""
    _check_results(results)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SeqsenseError(f"cannot create the report folder {str(out)!r}: {e}. Choose a writable --out.") from None
    sections = build_sections(results)
    title, meta = _title(results)
    figures = _figures(sections)
    if figures:
        (out / "plots").mkdir(exist_ok=True)
    for f in figures:
        write_atomic(out / "plots" / f"{f.name}.png", f.png)
    write_atomic(out / "summary.md", render_markdown(title, meta, sections).encode("utf-8"))
    write_atomic(out / "index.html", render_html(title, meta, sections).encode("utf-8"))
