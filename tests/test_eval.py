"""`seqsense eval`: causal replay, metrics and consumers on trained runs, and its bad-input paths."""

import csv
import json
import os

import numpy as np
import pytest

from seqsense.cli import main
from seqsense.dataset import WindowDataset, episode_refs
from seqsense.evaluate.replay import consumer_plan, replay_episode, score_episode
from seqsense.log import LogWriter, open_log
from seqsense.scenarios import generate
from seqsense.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny tracking log (train + test) and two briefly trained runs."""
    d = tmp_path_factory.mktemp("eval")
    knobs = {"image_size": 16, "radius": 0.15, "occlusion": 0.2}
    train_log = generate("tracking", d / "train.h5", episodes=4, seed=1, duration_s=3.0, knobs=knobs)
    test_log = generate("tracking", d / "test.h5", episodes=2, seed=2, duration_s=3.0, knobs=knobs)
    overrides = {"steps": 5, "batch_size": 4, "window": 8, "hidden": 8, "frame_channels": 4, "val_every": 5}
    run_dirs = []
    for family in ("framewise", "rnn"):
        train(family, [train_log], overrides, d / family, progress=False, log=lambda *_: None)
        run_dirs.append(d / family)
    return d, test_log, run_dirs


def test_eval_writes_metrics_per_model_and_episode(runs, capsys):
    d, test_log, run_dirs = runs
    out = d / "eval_out"
    code = main(["eval", *map(str, run_dirs), "--data", str(test_log), "--out", str(out), "--wrap", "ema:tau_s=0.1", "--no-progress"])
    assert code == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert sorted({r["model"] for r in rows}) == ["framewise", "framewise+ema(tau_s=0.1)", "rnn", "rnn+ema(tau_s=0.1)"]
    assert len(rows) == 4 * 2  # every variant on both test episodes
    for key in ("rmse", "flicker", "tvr", "lag_s", "nll", "coverage_90", "tracking.cost", "safety.cost", "intercept.cost", "latency_median_us"):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["rnn"]["family"] == "rnn"
    assert "rmse" in capsys.readouterr().out
    assert not [p for p in os.listdir(out) if p.endswith(".partial")]


def test_held_out_episodes_only(runs):
    d, test_log, run_dirs = runs
    out = d / "eval_val"
    train_log = d / "train.h5"
    assert main(["eval", str(run_dirs[1]), "--data", str(train_log), "--out", str(out), "--episodes", "val", "--no-progress"]) == 0
    meta = json.loads((run_dirs[1] / "best.json").read_text())
    val = {name.split(":")[1] for name in meta["extra"]["split"]["val"]}
    assert {r["episode"] for r in csv.DictReader(open(out / "metrics.csv"))} == val


def test_replay_is_causal_and_matches_offline_predict(runs):
    from seqsense.models.checkpoint import load_checkpoint

    _, test_log, run_dirs = runs
    model = load_checkpoint(run_dirs[1])
    ds = WindowDataset(episode_refs([test_log]), model.config.window_spec(window=1))
    rep = replay_episode(model.predictor(), ds, 0)
    offline = model.predict(ds.sequence(0))
    np.testing.assert_allclose(rep.mean, offline["mean"], rtol=1e-5, atol=1e-5)
    assert rep.step_s.shape == rep.t_s.shape and (rep.step_s > 0).all()
    row = score_episode(rep, ds, 0)
    assert row["n_events"] >= 0 and "tracking.cost" in row


def test_consumer_plan_follows_the_target(runs):
    _, test_log, _ = runs
    log = open_log(test_log)
    ep = log.episode("ep_000")
    assert set(consumer_plan(log.provenance, "truth/position", ep)) == {"tracking", "safety", "intercept"}
    plan = consumer_plan(log.provenance, "truth/future_position", ep)
    assert plan["intercept"][0]["prediction_is_future"] and plan["intercept"][1] == "truth/position"
    assert set(consumer_plan(log.provenance, "truth/velocity", ep)) == {"tracking"}


def test_logs_lacking_input_streams_exit_2(runs, tmp_path, capsys):
    _, _, run_dirs = runs
    other = tmp_path / "imu.h5"
    with LogWriter(other) as w:
        w.episode("ep_000").write_stream("gyro", "vector", np.arange(10) * 10**7, np.zeros((10, 3)), rate_hz=100)
    assert main(["eval", str(run_dirs[0]), "--data", str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "camera" in err and "imu.h5" in err


def test_bad_consumer_settings_and_unwritable_output_exit_2(runs, tmp_path, capsys):
    _, test_log, run_dirs = runs
    args = ["eval", str(run_dirs[0]), "--data", str(test_log), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a"), "--consumer", "tracking.kp=-1"]) == 2
    assert "kp" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--consumer", "planner.x=1"]) == 2
    assert "valid" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "c"), "--wrap", "median:k=3"]) == 2
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main([*args, "--out", str(blocker / "sub")]) == 2  # a folder that cannot be created
    assert "a_file" in capsys.readouterr().err


def test_gravity_targets_report_the_inclination_error(tmp_path, capsys):
    from seqsense.cli import main

    log = generate("imu_motion", tmp_path / "imu.h5", episodes=3, seed=0, duration_s=3.0, knobs={})
    run = tmp_path / "ekf"
    assert main(["train", "--model", "ekf", "--data", str(log), "--inputs", "gyro,accel", "--target", "truth/gravity_body",
                 "--out", str(run), "--set", "fit_epochs=0", "--set", "window=16", "--no-progress"]) == 0
    assert main(["eval", str(run), "--data", str(log), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    assert "inclination_deg" in capsys.readouterr().out
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    err = summary["models"]["ekf"]["inclination_deg"]
    assert 0.0 < err < 5.0  # the gravity EKF on a generated IMU log: a few degrees at most
