"""The study report: index.html is self-contained, summary.md matches, missing values never crash,
and scripts/readme_table.py replaces only the marked README block."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqsense.report import HEADLINE_END, HEADLINE_START, headline_block, headline_table, replace_marked_block, write_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "readme_table.py"
FAMILIES = ["framewise", "gp", "rnn", "transformer", "kalman"]
CONSUMERS = ["tracking", "safety", "intercept"]
VERDICTS = ["needs memory", "needs consistency only", "frame-independent is enough", "inconclusive"]


def _metrics(rng, consumers, optimal: bool) -> dict:
    m = {
        "rmse": float(rng.uniform(0.02, 0.2)), "mae": float(rng.uniform(0.01, 0.15)), "nll": float(rng.normal(-1, 1)),
        "coverage_50": float(rng.uniform(0.3, 0.6)), "coverage_90": float(rng.uniform(0.7, 0.95)),
        "crps": float(rng.uniform(0.01, 0.1)), "nees": float(rng.uniform(1, 4)), "flicker": float(rng.uniform(0.001, 0.05)),
        "tvr": float(rng.uniform(0.5, 3)), "jerk_ratio": float(rng.uniform(0.5, 50)), "lag_s": float(rng.choice([0, 0.033, 0.1])),
        "recovery_mean_s": math.nan, "mse_ratio": float(rng.uniform(1.0, 1.6)) if optimal else math.nan,
        "latency_median_us": float(rng.uniform(20, 900)), "latency_p99_us": float(rng.uniform(900, 5000)),
    }
    for c in consumers:
        m[f"{c}.cost"] = float(rng.uniform(0.1, 1.0))
    if "tracking" in consumers:
        m.update({"tracking.tracking_rms": 0.05, "tracking.chatter": 1.2, "tracking.saturation_frac": 0.0})
    return m


def _cell(rng, scenario, swept, consumers, *, optimal=False, occlusion=False, cuts=False, n_ticks=60) -> dict:
    names = FAMILIES[:1] + ["framewise+ema"] + FAMILIES[1:] + ["rnn-twin", "rnn-twin+ema"]
    models = {}
    for n in names:
        fam = n.split("+")[0].replace("-twin", "")
        models[n] = {"family": fam, "wrapper": "ema" if "+" in n else None, "twin": "-twin" in n,
                     "num_parameters": int(rng.integers(10, 60000)), "train_seconds": float(rng.uniform(1, 20)),
                     "train_steps": 150, "metrics": _metrics(rng, consumers, optimal),
                     "per_episode": [{"episode": f"ep_{k:03d}", "seed": 0, "rmse": 0.1} for k in range(8, 12)]}
    need, ranks = {}, {}
    for i, c in enumerate(consumers):
        lo = float(rng.uniform(-0.2, 0.3))
        gain = {"gain": lo + 0.1, "ci_low": lo, "ci_high": lo + 0.2, "verdict": VERDICTS[i % 4], "family": "rnn",
                "cost_base": 0.5, "cost_treated": 0.4, "margin": 0.05, "level": 0.95, "n_boot": 2000}
        need[c] = {"verdict": VERDICTS[i % 4], "family": "rnn", "memory": gain, "consistency": {**gain, "gain": 0.02},
                   "beyond_smoothing": gain, "lag_s": {"twin": 0.0, "twin_smoothed": 0.1, "full": 0.03}, "framewise_cost": 0.6}
        ranks[c] = {"kendall_tau": float(rng.uniform(-1, 1)), "p_value": float(rng.uniform(0, 1)), "rmse_pick": "rnn",
                    "consumer_pick": "gp" if i == 0 else "rnn", "picks_agree": i != 0, "n_models": len(names)}
    t = np.arange(n_ticks) / 30.0
    truth = np.stack([np.sin(t), np.cos(t)], axis=1)
    preds = {n: (truth + rng.normal(0, 0.05, truth.shape)).tolist() for n in names}
    preds["gp"][3][0] = None  # a missing tick in JSON
    occluded = [1 if 20 <= k < 30 else 0 for k in range(n_ticks)] if occlusion else None
    return {
        "scenario": scenario, "knobs": {"image_size": 32, **swept}, "swept": swept, "target": "truth/position",
        "target_fields": ["x", "y"], "inputs": ["camera"], "episodes": {"train": 8, "val": 2, "test": 4}, "seeds": [0],
        "status": "done", "models": models, "consumers": consumers, "need": need, "rank_agreement": ranks,
        "accuracy_gain": {"family": "rnn", "learned": 0.4, "oracle": 0.6, "fraction_of_oracle": 0.67} if optimal else {"family": "rnn", "learned": 0.1},
        "oracle": {"kind": "kalman_vs_lmmse", "mse_memory": 0.03, "mse_memoryless": 0.09, "gain": 0.6} if optimal else None,
        "example": {"episode": "ep_008", "t_s": t.tolist(), "truth": truth.tolist(), "occluded": occluded,
                    "cuts_s": [0.5, 1.2] if cuts else None, "predictions": preds},
    }


def make_results(seed: int = 0) -> dict:
    """A fake results dict shaped like the study's: several cells, an error cell and NaNs."""
    rng = np.random.default_rng(seed)
    cells = {
        "slideshow": _cell(rng, "slideshow", {}, ["tracking", "intercept"], cuts=True),
        "tracking_noise": _cell(rng, "tracking", {"pixel_noise": 0.25}, CONSUMERS),
        "tracking_clean": _cell(rng, "tracking", {}, CONSUMERS),
        "tracking_occlusion": _cell(rng, "tracking", {"occlusion": 0.3}, CONSUMERS, occlusion=True),
        "linear_gaussian_vector": _cell(rng, "linear_gaussian", {}, ["tracking", "intercept"], optimal=True),
        "imu_motion": {"scenario": "imu_motion", "knobs": {"tap_rate_hz": 0.5}, "swept": {"tap_rate_hz": 0.5},
                       "target": "truth/gravity_body", "target_fields": ["gx", "gy", "gz"], "inputs": ["gyro", "accel"],
                       "episodes": {"train": 8, "val": 2, "test": 4}, "seeds": [0],
                       "status": "error: RuntimeError: training diverged (loss=nan)", "models": {},
                       "consumers": ["tracking"], "need": {}, "rank_agreement": {}, "example": None},
    }
    # Sprinkle missing values the study may produce.
    tn = cells["tracking_noise"]
    tn["models"]["transformer"]["metrics"]["rmse"] = math.nan
    tn["models"]["kalman"]["metrics"]["flicker"] = None
    tn["models"]["gp"]["metrics"].pop("safety.cost")
    tn["need"]["intercept"]["ci_low"] = math.nan
    del tn["models"]["rnn"]["metrics"]["latency_p99_us"]
    return {
        "seqsense_version": "0.1.0", "recipe": "quick", "seed": 0, "created_utc": "2025-01-01T00:00:00Z", "elapsed_s": 412.0,
        "machine": {"cpu": "Test CPU", "cores": 2, "torch": "2.13.0", "device": "cpu"},
        "families": FAMILIES, "margin": 0.05, "budget": {"steps": 300, "encoder_steps": 200}, "seeds": [0],
        "controls": {"slideshow": {"kind": "negative", "status": "pass", "memory_verdict": "frame-independent is enough",
                                   "memory_gain": 0.01, "ci": [-0.01, 0.03], "family": "rnn", "expect": "memory: frame-independent is enough"},
                     "linear_gaussian_vector": {"kind": "positive", "status": "fail", "memory_verdict": "needs memory",
                                                "memory_gain": 0.4, "ci": [0.3, 0.5], "family": "gp", "learned_gain": 0.2,
                                                "oracle_gain": 0.6, "fraction_of_oracle": 0.33, "expect": "memory: needs memory"}},
        "controls_pass": False,
        "claims": [
            {"id": 1, "claim": "Slideshow-like streams need no temporal coherence", "verdict": "supported",
             "evidence": "On slideshow the gap CI is [-3%, +2%] for every consumer."},
            {"id": 2, "claim": "Transformers cannot model dynamic video", "verdict": "refuted",
             "evidence": "The temporal transformer is within 5% of the RNN <on> tracking & velocity."},
            {"id": 3, "claim": "Gaussian smoothness gives coherence", "verdict": "depends — on the consumer",
             "evidence": "Smoothing removes jitter but not distractor jumps."},
        ],
        "cells": cells,
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    results = make_results()
    write_report(results, out)
    return out, results


def test_writes_index_summary_and_plots_only(report):
    out, _ = report
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "plots", "summary.md"]
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert "need_tracking.png" in pngs and "optimality.png" in pngs and "trajectory_tracking_occlusion.png" in pngs
    assert all(n.endswith(".png") for n in pngs)
    assert all((out / "plots" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in pngs)


def test_html_is_self_contained(report):
    out, results = report
    page = (out / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    imgs = re.findall(r"<img\s[^>]*src=\"([^\"]*)\"", page)
    assert len(imgs) >= 5 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert "Slideshow-like streams need no temporal coherence" in page and "depends — on the consumer" in page
    assert "&lt;on&gt; tracking &amp; velocity" in page  # escaped
    for name in results["cells"]:
        assert name in page
    assert "error: RuntimeError" in page


def test_sections_in_order_and_markdown_matches(report):
    out, results = report
    page = (out / "index.html").read_text(encoding="utf-8")
    md = (out / "summary.md").read_text(encoding="utf-8")
    titles = ["Controls", "The claims", "Headline", "Oracle gaps", "Memory or consistency?", "Accuracy vs consistency", "Example trajectories",
              "Latency per model", "Optimality on linear-Gaussian cells", "Rank agreement", "Per-cell details"]
    for doc in (page, md):
        pos = [doc.index(t) for t in titles]
        assert pos == sorted(pos)
    assert md.startswith("# seqsense study: quick")
    links = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", md)
    assert links and all((out / link).is_file() for link in links)
    assert len(links) == page.count("<img ")
    for name in results["cells"]:
        assert name in md


def test_headline_table_one_row_per_cell():
    results = make_results()
    table = headline_table(results)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(results["cells"])
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    widths = {len(re.findall(r"(?<!\\)\|", line)) for line in lines}
    assert len(widths) == 1  # every row has the header's number of columns
    row = next(line for line in lines if line.startswith("| tracking_noise "))
    gain = results["cells"]["tracking_noise"]["need"]["tracking"]["memory"]
    assert "pixel_noise=0.25" in row and f"{gain['gain']:+.0%}" in row and f"{gain['ci_low']:+.0%}" in row
    assert next(line for line in lines if "imu_motion" in line).count("–") >= 4


def test_headline_block_states_controls_and_claims():
    block = headline_block(make_results())
    assert block.index("Controls: 1 of 2 passed") < block.index("| cell |") < block.index("The claims")
    assert "**FAIL**" in block and "0.33 of it" in block and "300 optimizer steps" in block


def test_missing_values_do_not_crash(tmp_path):
    results = make_results(seed=1)
    results["cells"] = {k: results["cells"][k] for k in ("tracking_clean", "imu_motion")}
    cell = results["cells"]["tracking_clean"]
    cell["need"] = {"tracking": {"gap": None, "verdict": None}}
    cell["rank_agreement"] = {"safety": None}
    cell["example"] = {"t_s": [0.0, 0.1], "truth": [[1.0, 2.0]], "predictions": {}}  # wrong length: skipped
    cell["models"]["gp"]["metrics"] = None
    cell["models"]["rnn"] = {"family": "rnn"}
    results["cells"]["weird"] = {"status": "error: no data"}
    results["cells"]["not_a_dict"] = "garbage"
    for k in ("machine", "elapsed_s", "claims", "margin", "families"):
        results[k] = None
    write_report(results, tmp_path / "a")
    assert (tmp_path / "a" / "index.html").is_file()
    write_report({"cells": {}}, tmp_path / "b")  # nothing at all
    page = (tmp_path / "b" / "index.html").read_text(encoding="utf-8")
    assert "No claims were evaluated" in page
    assert headline_table({"cells": {}}).count("\n") == 1


def test_write_report_rejects_non_dict(tmp_path):
    with pytest.raises(TypeError, match="results must be a dict"):
        write_report([1, 2], tmp_path)


def test_replace_marked_block_keeps_everything_else():
    text = f"intro\n{HEADLINE_START}\nold table\n{HEADLINE_END}\noutro\n"
    new = replace_marked_block(text, "| a |\n|---|")
    assert new == f"intro\n{HEADLINE_START}\n| a |\n|---|\n{HEADLINE_END}\noutro\n"
    with pytest.raises(ValueError, match="headline:start"):
        replace_marked_block("no markers here", "x")
    with pytest.raises(ValueError, match="swap"):
        replace_marked_block(f"{HEADLINE_END}\n{HEADLINE_START}", "x")


def _run_script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_readme_table_script(tmp_path):
    results_json = tmp_path / "results.json"
    results_json.write_text(json.dumps(make_results()), encoding="utf-8")  # NaN tokens, as the study writes them
    printed = _run_script(results_json)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == headline_block(json.loads(results_json.read_text())).strip()

    readme = tmp_path / "README.md"
    before, after = "# Title\n\nSome text.\n\n", "\n\nMore text.\n"
    readme.write_text(f"{before}{HEADLINE_START}\nstale\n{HEADLINE_END}{after}", encoding="utf-8")
    done = _run_script(results_json, "--readme", readme)
    assert done.returncode == 0, done.stderr
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(before + HEADLINE_START) and text.endswith(HEADLINE_END + after)
    assert "stale" not in text and "tracking_noise" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "results.json"]  # no temp file left

    plain = tmp_path / "PLAIN.md"
    plain.write_text("# no markers\n", encoding="utf-8")
    failed = _run_script(results_json, "--readme", plain)
    assert failed.returncode == 2
    assert "headline:start" in failed.stderr and "Traceback" not in failed.stderr
    assert plain.read_text(encoding="utf-8") == "# no markers\n"
    missing = _run_script(tmp_path / "nope.json")
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_report_does_not_mutate_results():
    results = make_results()
    snapshot = copy.deepcopy(results)
    headline_table(results)
    assert json.dumps(results, sort_keys=True) == json.dumps(snapshot, sort_keys=True)


def test_trajectory_holds_a_model_on_its_own_clock_at_the_plot_ticks():
    """A model on a slower clock (e.g. a stateful rnn at 50 Hz beside 200 Hz filters) is plotted with its
    latest prediction at each tick, NaN before its first, instead of failing to reshape."""
    from seqsense.report.trajectory import _on_ticks

    t = np.arange(10) * 0.005  # 200 Hz plot ticks
    same = {"t_s": t, "mean": np.arange(10.0)}
    np.testing.assert_array_equal(_on_ticks(same, t)[:, 0], np.arange(10.0))
    slow = {"t_s": np.array([0.004, 0.024, 0.044]), "mean": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])}
    got = _on_ticks(slow, t)
    assert got.shape == (10, 2) and np.isnan(got[0]).all()
    np.testing.assert_array_equal(got[1:5], [[1.0, 2.0]] * 4)
    np.testing.assert_array_equal(got[5:9], [[3.0, 4.0]] * 4)
    np.testing.assert_array_equal(got[9], [5.0, 6.0])
