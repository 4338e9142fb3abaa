"""Learning checks on generated logs: temporal models beat framewise where memory matters; DDP runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from seqsense.dataset import WindowDataset, episode_refs
from seqsense.models.checkpoint import load_checkpoint
from seqsense.train import train

KNOBS = {"hidden": 32, "frame_channels": 8, "window": 16, "stride": 4, "batch_size": 16, "lr": 3e-3, "val_fraction": 0.25}


def held_out_mse(result, log_path) -> tuple[float, float]:
    """(model MSE, MSE of predicting the training mean) over the run's validation episodes."""
    val = set(json.loads((result.run_dir / "last.json").read_text())["extra"]["split"]["val"])
    refs = [r for r in episode_refs([log_path]) if f"{log_path.name}:{r[1]}" in val]
    ds = WindowDataset(refs, result.config.window_spec())
    mean = result.model.target_mean.numpy()
    se, base = [], []
    for k in range(len(refs)):
        seq = ds.sequence(k)
        ok = seq["target_valid"]
        se.append(((result.model.predict(seq)["mean"] - seq["target"]) ** 2).sum(-1)[ok])
        base.append(((mean - seq["target"]) ** 2).sum(-1)[ok])
    return float(np.concatenate(se).mean()), float(np.concatenate(base).mean())


def test_framewise_beats_the_training_mean_on_a_generated_tracking_log(tmp_path):
    scenarios = pytest.importorskip("seqsense.scenarios")
    log = scenarios.generate("tracking", tmp_path / "track.h5", episodes=12, seed=2, duration_s=4.0, knobs={"image_size": 16, "radius": 0.15})  # a 1-px ball takes a 16-px CNN far longer
    res = train("framewise", [log], {**KNOBS, "steps": 250}, tmp_path / "run", progress=False, log=lambda m: None)
    mse, base = held_out_mse(res, log)
    assert mse < 0.5 * base, (mse, base)


def test_memoryless_twin_trains(tiny_log, tmp_path):
    """`train("rnn", ..., ["memoryless=true"])` (the CLI's --set form) trains the GRU's twin: its loss falls."""
    losses = []
    sets = ["memoryless=true", "hidden=16", "window=8", "batch_size=8", "steps=80", "lr=5e-3", "val_every=80"]
    res = train("rnn", [tiny_log], sets, tmp_path / "twin", inputs=["imu"], target="truth/pos", progress=False,
                log=lambda m: None, on_step=lambda step, loss: losses.append(loss))
    assert res.config.memoryless and not res.model.has_memory and res.model.init_state(4) == {}
    assert len(losses) == 80 and np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.15, (losses[:10], losses[-10:])
    assert load_checkpoint(res.run_dir / "best").config.memoryless


@pytest.mark.slow
def test_memory_beats_framewise_on_a_noisy_occluded_log(make_log, tmp_path):
    log = make_log("occluded.h5", episodes=24, ticks=80, noise=0.3, occlusion=0.5, seed=5)
    scores = {}
    for family in ("framewise", "rnn", "transformer"):
        res = train(family, [log], {**KNOBS, "steps": 300, "val_every": 100}, tmp_path / family, progress=False, log=lambda m: None)
        scores[family] = (held_out_mse(res, log)[0], res.val_loss)
    for family in ("rnn", "transformer"):
        assert scores[family][0] < 0.7 * scores["framewise"][0], scores  # squared error
        assert scores[family][1] < scores["framewise"][1] - 0.1, scores  # Gaussian NLL


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tiny_log, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "seqsense", "train",
           "--model", "rnn", "--data", str(tiny_log), "--out", str(out), "--device", "cpu", "--no-progress",
           "--set", "steps=8", "--set", "hidden=16", "--set", "window=8", "--set", "val_every=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("rnn:") == 1  # only rank 0 reports
    model = load_checkpoint(out)
    extra = model.checkpoint_meta["extra"]
    assert extra["world_size"] == 2 and extra["step"] == 8
    assert not list(out.glob(".*partial"))
