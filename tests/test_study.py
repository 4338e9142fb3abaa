"""`seqsense study` end to end on a tiny recipe, resume after an interruption, and the claim verdicts."""

import json
import math

import pytest

from seqsense.claims import assess_claims
from seqsense.cli import main
from seqsense.study import StudyConfig, summarize_cell

TINY = {
    "name": "tiny",
    "description": "two small cells for tests",
    "seed": 0,
    "cells": [
        {"name": "slideshow", "scenario": "slideshow", "knobs": {"image_size": 16}, "episodes": 4, "duration_s": 3.0},
        {"name": "lg", "scenario": "linear_gaussian", "knobs": {}, "episodes": 4, "duration_s": 3.0},
    ],
}
SETTINGS = ["--set", "steps=4", "--set", "time_budget_s=5", "--set", "test_episodes=2", "--set", "n_boot=50", "--set", "hidden=8", "--set", "window=8", "--set", "batch_size=4"]


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(tmp_path, capsys):
    recipe = tmp_path / "tiny.json"
    recipe.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    args = ["study", "--recipe", str(recipe), "--out", str(out), "--no-progress", *SETTINGS, "--set", "families=framewise,rnn,kalman"]
    assert main([*args, "--jobs", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["cells"]) == {"slideshow", "lg"}
    for name, cell in results["cells"].items():
        assert cell["status"] == "done"
        assert set(cell["models"]) == {"framewise", "framewise+ema", "rnn", "kalman"}
        assert "tracking" in cell["need"] and cell["need"]["tracking"]["verdict"] in (
            "needs temporal modeling", "frame-independent is enough", "inconclusive")
        assert cell["example"]["predictions"]["rnn"]
    lg = results["cells"]["lg"]["models"]
    assert lg["kalman"]["metrics"]["mse_ratio"] == pytest.approx(1.0, abs=0.02)  # the stored optimum, reproduced
    assert [c["id"] for c in results["claims"]] == [1, 2, 3, 4, 5]
    html = (out / "index.html").read_text()
    assert "slideshow" in html and "data:image/png;base64" in html
    assert (out / "summary.md").exists()
    # An interrupted study resumes: finished cells are kept, a lost one is redone, nothing retrains.
    (out / "cells" / "lg" / "seed0" / "eval.json").unlink()
    stamp = (out / "cells" / "slideshow" / "seed0" / "eval.json").stat().st_mtime_ns
    runs = sorted(p.stat().st_mtime_ns for p in out.glob("cells/*/seed0/runs/*/best.json"))
    assert main([*args, "--jobs", "2"]) == 0  # resumed in 2 worker processes
    assert (out / "cells" / "slideshow" / "seed0" / "eval.json").stat().st_mtime_ns == stamp
    assert sorted(p.stat().st_mtime_ns for p in out.glob("cells/*/seed0/runs/*/best.json")) == runs
    assert json.loads((out / "results.json").read_text())["cells"]["lg"]["status"] == "done"


def test_study_bad_settings_exit_2(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "o"), "--set", "steps=0"]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(["study", "--out", str(tmp_path / "o"), "--set", "nope=1"]) == 2
    assert "valid keys" in capsys.readouterr().err
    assert main(["study", "--out", str(tmp_path / "o"), "--set", "families=framewise,resnet"]) == 2
    assert "resnet" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["study", "--out", str(blocker / "sub")]) == 2
    assert "file" in capsys.readouterr().err


def _rows(model, costs, rmse, seed=0):
    return [{"model": model, "seed": seed, "episode": f"ep_{i}", "rmse": rmse, "tracking.cost": c} for i, c in enumerate(costs)]


def test_smoothed_memoryless_model_counts_as_temporal():
    models = {
        "framewise": {"family": "framewise", "wrapper": None, "train_seconds": 1, "train_steps": 1},
        "framewise+ema": {"family": "framewise", "wrapper": "ema(tau_s=0.1)", "train_seconds": 1, "train_steps": 1},
        "rnn": {"family": "rnn", "wrapper": None, "train_seconds": 1, "train_steps": 1},
    }
    rows = _rows("framewise", [1.0, 1.1, 0.9, 1.0], 0.1) + _rows("framewise+ema", [0.5, 0.6, 0.5, 0.55], 0.1) + _rows("rnn", [0.8, 0.9, 0.8, 0.85], 0.1)
    res = [{"models": models, "rows": rows, "example": {}, "target_var": 1.0}]
    cell = summarize_cell(res, ["framewise"], StudyConfig(n_boot=200))
    need = cell["need"]["tracking"]
    assert need["best_memoryless"] == "framewise" and need["best_temporal"] == "framewise+ema"
    assert need["verdict"] == "needs temporal modeling" and need["gap"] == pytest.approx(1 - 0.5375 / 1.0, abs=1e-6)
    assert cell["models"]["rnn"]["metrics"]["r2"] == pytest.approx(1 - 0.01)


def test_unlearned_cell_is_inconclusive():
    models = {f: {"family": f, "wrapper": None, "train_seconds": 1, "train_steps": 1} for f in ("framewise", "rnn")}
    rows = _rows("framewise", [1.0, 1.0, 1.0, 1.0], 0.95) + _rows("rnn", [1.0, 1.01, 0.99, 1.0], 0.9)
    cell = summarize_cell([{"models": models, "rows": rows, "example": {}, "target_var": 1.0}], ["framewise"], StudyConfig(n_boot=200))
    assert cell["need"]["tracking"]["verdict"] == "inconclusive" and "no model learned" in cell["need"]["tracking"]["note"]


def _need(verdict, gap=0.3):
    return {"gap": gap, "ci_low": gap - 0.1, "ci_high": gap + 0.1, "verdict": verdict, "best_temporal": "rnn", "best_memoryless": "framewise"}


def _cell(scenario, knobs, need_verdict, rmse, flicker=None):
    models = {m: {"family": m, "metrics": {"rmse": r, "r2": 0.9, "flicker": (flicker or {}).get(m, math.nan)}} for m, r in rmse.items()}
    return {"scenario": scenario, "knobs": knobs, "models": models, "need": {"tracking": _need(need_verdict)}, "rank_agreement": {}}


def test_claims_follow_the_measurements():
    results = {
        "cells": {
            "slideshow": _cell("slideshow", {}, "frame-independent is enough", {"framewise": 0.1, "transformer": 0.1, "gp": 0.1}),
            "velocity": dict(_cell("tracking", {"target": "velocity"}, "needs temporal modeling", {"framewise": 1.0, "transformer": 0.5}), inputs=["camera"]),
            "noise": _cell("tracking", {"pixel_noise": 0.25}, "needs temporal modeling", {"framewise": 0.1, "gp": 0.1}, {"gp": 0.01, "framewise": 0.05}),
        }
    }
    claims = {c["id"]: c for c in assess_claims(results)}
    assert claims[1]["verdict"] == "supported"
    assert claims[2]["verdict"] == "refuted" and "velocity" in claims[2]["evidence"]
    assert claims[3]["verdict"] == "supported"
    assert claims[4]["verdict"] == "supported"
    assert claims[5]["verdict"] == "refuted" and "2 of 3" in claims[5]["evidence"]
    results["cells"]["slideshow"]["need"]["tracking"] = _need("needs temporal modeling")
    claims = {c["id"]: c for c in assess_claims(results)}
    assert claims[1]["verdict"] == "refuted" and claims[4]["verdict"] == "depends"
    empty = {c["id"]: c["verdict"] for c in assess_claims({"cells": {}})}
    assert set(empty.values()) == {"inconclusive"}
