"""`seqsense study`: the controlled comparison (twins, smoothing, oracle, controls), reproducibility,
resume, and a clean stop on Ctrl-C."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from seqsense.claims import assess_claims
from seqsense.cli import main
from seqsense.study import StudyConfig, summarize_cell

TINY = {
    "name": "tiny",
    "description": "two small cells for tests",
    "seed": 0,
    "cells": [
        {"name": "slideshow", "scenario": "slideshow", "knobs": {"image_size": 16}, "episodes": 6, "duration_s": 3.0, "control": "negative"},
        {"name": "lg", "scenario": "linear_gaussian", "knobs": {}, "episodes": 6, "duration_s": 3.0, "control": "positive"},
    ],
}
SETTINGS = ["--set", "steps=8", "--set", "encoder_steps=8", "--set", "test_episodes=2", "--set", "n_boot=50", "--set", "hidden=8",
            "--set", "window=8", "--set", "batch_size=4", "--set", "families=framewise,rnn,kalman"]
TIMING_KEYS = {"created_utc", "elapsed_s", "compute_s", "machine", "train_seconds", "seconds"}


def _numbers(x):
    """`x` without wall-clock timings and step latencies: what must be identical on every rerun."""
    if isinstance(x, dict):
        return {k: _numbers(v) for k, v in x.items() if k not in TIMING_KEYS and not k.startswith("latency")}
    if isinstance(x, list):
        return [_numbers(v) for v in x]
    return x


def _recipe(tmp_path, doc=TINY) -> Path:
    path = tmp_path / f"{doc['name']}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.slow
def test_tiny_study_end_to_end_reproducible_and_resumable(tmp_path):
    recipe = _recipe(tmp_path)
    args = ["study", "--recipe", str(recipe), "--no-progress", *SETTINGS]
    assert main([*args, "--out", str(tmp_path / "a"), "--jobs", "1"]) in (0, 1)  # 1: a control may fail on 8 steps
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    for name, cell in first["cells"].items():
        assert cell["status"] == "done"
        assert {"framewise", "framewise+ema", "rnn", "rnn-twin", "rnn+ema", "rnn-twin+ema", "kalman", "kalman-twin"} <= set(cell["models"])
        assert cell["models"]["rnn-twin"]["num_parameters"] == cell["models"]["rnn"]["num_parameters"]
        need = cell["need"]["tracking"]
        assert need["verdict"] in ("needs memory", "needs consistency only", "frame-independent is enough", "inconclusive")
        assert need["family"] in ("rnn", "kalman")  # framewise has no memory: never the pick
        assert need["memory"]["ci_low"] <= need["memory"]["gain"] <= need["memory"]["ci_high"]
        assert cell["example"]["predictions"]["rnn-twin"]
    lg = first["cells"]["lg"]
    assert lg["need"]["tracking"]["family"] == "rnn"  # the stored-system kalman is the oracle, never the learned pick
    assert lg["models"]["kalman"]["oracle_system"] and lg["models"]["kalman"]["metrics"]["mse_ratio"] == pytest.approx(1.0, abs=0.02)
    assert lg["oracle"]["kind"] and lg["oracle"]["gain"] > 0.3  # the optimal filter against the best memoryless estimate
    assert first["cells"]["slideshow"]["oracle"]["gain"] == 0.0  # clean frames: the memoryless oracle is exact
    assert set(first["controls"]) == {"slideshow", "lg"} and all(c["status"] in ("pass", "fail") for c in first["controls"].values())
    assert [c["id"] for c in first["claims"]] == [1, 2, 3, 4, 5]
    html = (tmp_path / "a" / "index.html").read_text()
    assert html.index("Controls") < html.index("The claims") and "data:image/png;base64" in html

    # The same command in 2 worker processes, in a fresh folder: the same numbers.
    out = tmp_path / "b"
    assert main([*args, "--out", str(out), "--jobs", "2"]) in (0, 1)
    assert _numbers(json.loads((out / "results.json").read_text())) == _numbers(first)
    # A finished cell deleted and re-run: the same numbers; the other cell is loaded, not retrained.
    import shutil

    shutil.rmtree(out / "cells" / "lg")
    stamp = (out / "cells" / "slideshow" / "seed0" / "eval.json").stat().st_mtime_ns
    assert main([*args, "--out", str(out), "--jobs", "2"]) in (0, 1)
    assert (out / "cells" / "slideshow" / "seed0" / "eval.json").stat().st_mtime_ns == stamp
    assert _numbers(json.loads((out / "results.json").read_text())) == _numbers(first)


REDUCED = {
    "name": "controls",
    "description": "the two controls that must hold whatever the budget",
    "seed": 0,
    "cells": [
        {"name": "slideshow", "scenario": "slideshow", "knobs": {"image_size": 16, "pixel_noise": 0.0}, "episodes": 16,
         "duration_s": 6.0, "control": "negative"},
        {"name": "linear_gaussian_vector", "scenario": "linear_gaussian", "knobs": {}, "episodes": 12, "duration_s": 10.0,
         "inputs": ["measurement"], "control": "positive"},
    ],
}


@pytest.mark.slow
def test_controls_hold_on_a_reduced_recipe(tmp_path):
    """The clean slideshow needs no memory; linear_gaussian_vector needs it, with a learned family's
    accuracy gain at least half the oracle's (the stored-system kalman excluded from the pick)."""
    out = tmp_path / "out"
    args = ["study", "--recipe", str(_recipe(tmp_path, REDUCED)), "--out", str(out), "--no-progress", "--jobs", "2",
            "--set", "steps=300", "--set", "encoder_steps=150", "--set", "test_episodes=4", "--set", "n_boot=500",
            "--set", "families=framewise,gp,rnn"]
    main(args)
    results = json.loads((out / "results.json").read_text())
    controls = results["controls"]
    detail = json.dumps(controls, indent=1)
    assert controls["slideshow"]["memory_verdict"] == "frame-independent is enough", detail
    lg = controls["linear_gaussian_vector"]
    assert lg["memory_verdict"] == "needs memory" and lg["family"] in ("gp", "rnn"), detail
    assert lg["fraction_of_oracle"] >= 0.5, detail
    assert results["controls_pass"]


def _group_alive(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group `pgid`."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(d.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_study_stops_every_worker_and_keeps_finished_files(tmp_path, sig):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "seqsense", "study", "--recipe", str(_recipe(tmp_path)), "--out", str(out), "--no-progress",
           "--jobs", "2", *[a if a != "steps=8" else "steps=100000" for a in SETTINGS]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("cells/*/seed0/runs/*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)  # both workers are training
    time.sleep(1.0)
    assert proc.poll() is None, proc.stderr.read().decode()
    t0 = time.monotonic()
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)  # Ctrl-C reaches the whole group
    rc = proc.wait(timeout=20)
    assert time.monotonic() - t0 < 10, "the study took more than 10 s to stop"
    assert rc == 130, proc.stderr.read().decode()
    time.sleep(0.5)
    assert _group_alive(proc.pid) == [], "workers outlived the study"
    assert not list(out.rglob("*.partial")), "a half-written file was left behind"
    assert not (out / "results.json").exists()


def _rows(model, costs, rmse, seed=0):
    return [{"model": model, "seed": seed, "episode": f"ep_{i}", "rmse": rmse, "lag_s": 0.0, "tracking.cost": c}
            for i, c in enumerate(costs)]


def _models(*labels):
    out = {}
    for label in labels:
        base = label.replace("+ema", "")
        fam = base.replace("-twin", "")
        out[label] = {"family": fam, "twin": base.endswith("-twin"), "wrapper": "ema" if label.endswith("+ema") else None,
                      "has_memory": fam != "framewise" and not base.endswith("-twin"), "oracle_system": False,
                      "train_seconds": 1, "train_steps": 1, "tau_s": {"tracking": 0.1}}
    return out


def _cell(rows, labels):
    return summarize_cell([{"models": _models(*labels), "rows": rows, "example": {}, "target_var": 1.0}], StudyConfig(n_boot=300))


LABELS = ("framewise", "framewise+ema", "rnn", "rnn+ema", "rnn-twin", "rnn-twin+ema")
EPS = np.linspace(0.9, 1.1, 8)


def test_memory_gain_is_the_family_against_its_own_twin():
    # framewise is much worse than the rnn's twin (a capacity gap): it must not count as a memory gain.
    rows = (_rows("framewise", 3 * EPS, 0.3) + _rows("framewise+ema", 3 * EPS, 0.3) + _rows("rnn", 0.5 * EPS, 0.1)
            + _rows("rnn+ema", 0.5 * EPS, 0.1) + _rows("rnn-twin", 1.0 * EPS, 0.2) + _rows("rnn-twin+ema", 1.0 * EPS, 0.2))
    need = _cell(rows, LABELS)["need"]["tracking"]
    assert need["family"] == "rnn" and need["verdict"] == "needs memory"
    assert need["memory"]["gain"] == pytest.approx(0.5) and need["framewise_cost"] == pytest.approx(3.0)


def test_smoothing_the_twin_that_matches_memory_is_consistency_only():
    rows = (_rows("framewise", EPS, 0.2) + _rows("framewise+ema", 0.6 * EPS, 0.2) + _rows("rnn", 0.6 * EPS, 0.1)
            + _rows("rnn+ema", 0.6 * EPS, 0.1) + _rows("rnn-twin", EPS, 0.1) + _rows("rnn-twin+ema", 0.6 * EPS, 0.1))
    need = _cell(rows, LABELS)["need"]["tracking"]
    assert need["memory"]["verdict"] == "needs memory"  # the full model beats its twin ...
    assert need["beyond_smoothing"]["verdict"] == "frame-independent is enough"  # ... but no more than the smoothed twin
    assert need["verdict"] == "needs consistency only"


def test_equal_twin_and_full_is_frame_independent_and_unlearned_is_inconclusive():
    rows = [r for label in LABELS for r in _rows(label, EPS, 0.1)]
    assert _cell(rows, LABELS)["need"]["tracking"]["verdict"] == "frame-independent is enough"
    rows = [r for label in LABELS for r in _rows(label, EPS, 0.95)]  # R² < 0.5 everywhere
    need = _cell(rows, LABELS)["need"]["tracking"]
    assert need["verdict"] == "inconclusive" and "no model learned" in need["note"]


def test_accuracy_gain_and_oracle_fraction():
    rows = [r for label in LABELS for r in _rows(label, EPS, {"rnn": 0.1, "rnn+ema": 0.1}.get(label, 0.2))]
    res = {"models": _models(*LABELS), "rows": rows, "example": {}, "target_var": 1.0,
           "oracle": {"kind": "k", "gain": 0.5, "per_episode": [{"episode": "e", "mse_memory": 0.5, "mse_memoryless": 1.0}]}}
    cell = summarize_cell([res], StudyConfig(n_boot=100))
    acc = cell["accuracy_gain"]
    assert acc["family"] == "rnn" and acc["learned"] == pytest.approx(0.75) and acc["fraction_of_oracle"] == pytest.approx(1.5)


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


def _gain(verdict, gain=0.3, family="rnn"):
    return {"gain": gain, "ci_low": gain - 0.1, "ci_high": gain + 0.1, "verdict": verdict, "family": family}


def _need(verdict, memory="needs memory", consistency="frame-independent is enough"):
    return {"verdict": verdict, "memory": _gain(memory), "consistency": _gain(consistency, 0.0), "beyond_smoothing": _gain(memory)}


def _claim_cell(scenario, knobs, need, rmse, inputs=("camera",)):
    models = {m: {"family": m.split("-")[0], "metrics": {"rmse": r, "r2": 0.9}} for m, r in rmse.items()}
    return {"scenario": scenario, "knobs": knobs, "inputs": list(inputs), "models": models, "need": {"tracking": need}, "rank_agreement": {}}


def test_claims_follow_the_controlled_comparison():
    enough = _need("frame-independent is enough", memory="frame-independent is enough")
    results = {"cells": {
        "slideshow": _claim_cell("slideshow", {}, enough, {"transformer": 0.1, "transformer-twin": 0.1}),
        "velocity": _claim_cell("tracking", {"target": "velocity"}, _need("needs memory"), {"transformer": 0.5, "transformer-twin": 1.0}),
    }}
    claims = {c["id"]: c for c in assess_claims(results)}
    assert claims[1]["verdict"] == "supported"
    assert claims[2]["verdict"] == "refuted" and "context-1 twin" in claims[2]["evidence"]
    assert claims[4]["verdict"] == "supported"
    assert claims[5]["verdict"] == "refuted" and "1 of 2" in claims[5]["evidence"]
    results["cells"]["slideshow"]["need"]["tracking"] = _need("needs memory")
    claims = {c["id"]: c for c in assess_claims(results)}
    assert claims[1]["verdict"] == "refuted" and claims[4]["verdict"] == "depends"
    assert set(c["verdict"] for c in assess_claims({"cells": {}})) == {"inconclusive"}


@pytest.mark.slow
def test_ray_executor_gives_the_numbers_of_the_local_run(tmp_path):
    pytest.importorskip("ray")
    one = {**TINY, "name": "one", "cells": [TINY["cells"][1]]}
    args = ["study", "--recipe", str(_recipe(tmp_path, one)), "--no-progress", *SETTINGS[:-1], "families=framewise,rnn"]
    assert main([*args, "--out", str(tmp_path / "local"), "--jobs", "1"]) in (0, 1)
    assert main([*args, "--out", str(tmp_path / "ray"), "--jobs", "2", "--executor", "ray"]) in (0, 1)
    local, ray = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("local", "ray"))
    assert ray["cells"]["lg"]["status"] == "done"
    assert _numbers(ray) == _numbers(local)


def test_study_on_recorded_logs(tmp_path, capsys):
    """`seqsense study --data` splits the logs' episodes by episode (seeded, disjoint, complete) and runs the
    same controlled comparison on them; bad logs, streams and too few episodes exit 2 naming what is wrong."""
    import h5py

    from seqsense.scenarios import generate

    log = tmp_path / "rec.h5"
    generate("linear_gaussian", log, episodes=5, seed=7, duration_s=3.0, knobs={})
    out = tmp_path / "out"
    args = ["study", "--data", str(log), "--inputs", "measurement", "--target", "truth/position", "--no-progress", "--jobs", "1",
            "--set", "steps=20", "--set", "families=framewise,rnn", "--set", "n_boot=100", "--out", str(out)]
    assert main(args) in (0, 1)
    res = json.loads((out / "results.json").read_text())
    cell = res["cells"]["recorded"]
    assert cell["status"] == "done" and cell["scenario"] == "recorded" and cell["episodes"] == {"train": 3, "test": 2}
    assert cell["need"]["tracking"]["memory"]["family"] == "rnn"  # the only family with a twin
    split = [set(h5py.File(out / "cells" / "recorded" / "seed0" / f"{s}.h5", "r")["episodes"]) for s in ("train", "test")]
    assert not split[0] & split[1] and split[0] | split[1] == set(h5py.File(log, "r")["episodes"])
    assert "recorded · rec.h5" in (out / "summary.md").read_text()

    bad = ["study", "--inputs", "measurement", "--out", str(tmp_path / "o2"), "--no-progress"]
    assert main([*bad, "--data", str(log), "--target", "truth/nope"]) == 2
    err = capsys.readouterr().err
    assert "rec.h5" in err and "episode" in err and "truth/nope" in err
    assert main([*bad, "--data", str(tmp_path / "missing.h5"), "--target", "truth/position"]) == 2
    assert "missing.h5" in capsys.readouterr().err
    small = tmp_path / "small.h5"
    generate("linear_gaussian", small, episodes=2, seed=7, duration_s=2.0, knobs={})
    assert main([*bad, "--data", str(small), "--target", "truth/position"]) == 2
    assert "every=S" in capsys.readouterr().err
    assert main(["study", "--data", str(log), "--out", str(tmp_path / "o3")]) == 2  # no --inputs/--target

    # a fixed split: train on one recording, test on another
    fixed = ["study", "--data", str(log), "--test-data", str(small), "--inputs", "measurement", "--target", "truth/position",
             "--no-progress", "--jobs", "1", "--set", "steps=10", "--set", "families=framewise,rnn", "--set", "n_boot=50",
             "--out", str(tmp_path / "fixed")]
    assert main([*fixed, "--model-set", "rnn.nope=1"]) == 2  # a setting the family does not take
    assert "rnn" in (err := capsys.readouterr().err) and "nope" in err
    assert main([*fixed, "--model-set", "stateful=true"]) == 2 and "FAMILY.KEY=VALUE" in capsys.readouterr().err
    # a clock of its own too (7 Hz, not the target's): evaluation, the report and its trajectory plot take it
    assert main([*fixed, "--model-set", "rnn.stateful=true", "--model-set", "rnn.tbptt_window=8", "--model-set", "rnn.rate_hz=7",
                 "--model-set", "rnn.window=8"]) in (0, 1)
    from seqsense.models.checkpoint import read_checkpoint_meta

    for run in ("rnn", "rnn-twin"):  # the family and its twin get the cell's settings alike
        config = read_checkpoint_meta(tmp_path / "fixed" / "cells" / "recorded" / "seed0" / "runs" / run)["config"]
        assert config["stateful"] is True and config["tbptt_window"] == 8 and config["rate_hz"] == 7, run
    cell = json.loads((tmp_path / "fixed" / "results.json").read_text())["cells"]["recorded"]
    assert cell["status"] == "done" and cell["episodes"] == {"train": 5, "test": 2}
    test_eps = set(h5py.File(tmp_path / "fixed" / "cells" / "recorded" / "seed0" / "test.h5", "r")["episodes"])
    assert len(test_eps) == 2 and "→ tested on small.h5" in (tmp_path / "fixed" / "summary.md").read_text()
