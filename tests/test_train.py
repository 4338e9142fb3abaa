"""Training: the API and CLI, run-dir files, learning checks, resume, bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from seqsense.cli import main
from seqsense.dataset import WindowDataset, episode_refs
from seqsense.errors import ConfigError, SeqsenseError
from seqsense.log import LogWriter, seconds_to_ns
from seqsense.models import MODELS, ModelConfig, SequenceModel
from seqsense.models.checkpoint import load_checkpoint
from seqsense.train import BatchSchedule, train

TINY = {"hidden": 16, "frame_channels": 4, "window": 8, "batch_size": 8, "val_every": 10}


def test_train_api_writes_a_complete_run_dir(tiny_log, tmp_path):
    res = train("framewise", [tiny_log], {**TINY, "steps": 20}, tmp_path / "run", progress=False, log=lambda m: None)
    for name in ("best.json", "best.safetensors", "last.json", "last.safetensors", "train_state.json", "train_state.safetensors", "metrics.csv"):
        assert (tmp_path / "run" / name).exists(), name
    assert res.steps == 20 and res.num_parameters == res.model.num_parameters() > 0
    assert res.config.inputs == ("camera",) and res.config.target == "truth/pos"  # from the log's provenance
    assert res.seconds > 0 and res.windows_per_s > 0 and np.isfinite(res.train_loss) and np.isfinite(res.val_loss)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["step"]) for r in rows][-1] == 20 and rows[-1]["val_loss"]
    best = load_checkpoint(tmp_path / "run")  # a run dir loads its best checkpoint
    assert best.checkpoint_meta["extra"]["split"]["val"] and best.checkpoint_meta["versions"]["torch"] == torch.__version__
    seq = _sequence(tiny_log, res.config)
    np.testing.assert_allclose(best.predict(seq)["mean"], res.model.predict(seq)["mean"])


def _sequence(log_path, config):
    return WindowDataset(episode_refs([log_path])[:1], config.window_spec()).sequence(0)


def test_loss_falls_and_beats_the_training_mean(tiny_log, tmp_path):
    res = train("framewise", [tiny_log], {**TINY, "hidden": 32, "steps": 150, "lr": 3e-3, "val_every": 50}, tmp_path / "r", progress=False, log=lambda m: None)
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    losses = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert losses[-1] < losses[0] - 1.0, losses
    # held-out episodes: mean squared error vs predicting the training mean
    val = json.loads((tmp_path / "r" / "last.json").read_text())["extra"]["split"]["val"]
    refs = [r for r in episode_refs([tiny_log]) if f"{tiny_log.name}:{r[1]}" in val]
    ds = WindowDataset(refs, res.config.window_spec())
    mse, base = [], []
    train_mean = res.model.target_mean.numpy()
    for k in range(len(ds.episodes)):
        seq = ds.sequence(k)
        y = seq["target"][seq["target_valid"]]
        mse.append(((res.model.predict(seq)["mean"][seq["target_valid"]] - y) ** 2).mean())
        base.append(((train_mean - y) ** 2).mean())
    assert np.mean(mse) < 0.5 * np.mean(base), (np.mean(mse), np.mean(base))


def test_resume_continues_to_the_same_weights(tiny_log, tmp_path):
    knobs = {**TINY, "steps": 20, "val_every": 10}
    train("rnn", [tiny_log], knobs, tmp_path / "straight", progress=False, log=lambda m: None)

    def kill(step, loss):
        if step == 13:  # the last train_state is from step 10
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("rnn", [tiny_log], knobs, tmp_path / "killed", progress=False, log=lambda m: None, on_step=kill)
    res = train("rnn", [tiny_log], knobs, tmp_path / "killed", resume=True, progress=False, log=lambda m: None)
    assert res.steps == 20
    a = load_file(tmp_path / "straight" / "last.safetensors")
    b = load_file(tmp_path / "killed" / "last.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "killed" / "metrics.csv"))]
    assert steps == sorted(steps) and len(set(steps)) >= len(steps) - 1  # no duplicated history after resume


def test_resume_refuses_a_different_config(tiny_log, tmp_path):
    train("framewise", [tiny_log], {**TINY, "steps": 5}, tmp_path / "r", progress=False, log=lambda m: None)
    with pytest.raises(ConfigError, match="hidden"):
        train("framewise", [tiny_log], {**TINY, "steps": 10, "hidden": 8}, tmp_path / "r", resume=True, progress=False, log=lambda m: None)


def test_batch_schedule_is_a_function_of_step():
    s = BatchSchedule(10, 4, seed=3)
    first = [s.indices(k) for k in range(6)]
    assert [BatchSchedule(10, 4, seed=3).indices(k) for k in range(6)] == first
    assert all(len(b) == 4 for b in first) and len(set(sum(first[:2], []))) == 8  # no repeats within an epoch


@dataclasses.dataclass
class _ConstConfig(ModelConfig):
    """Config of the closed-form test family."""


class _ConstModel(SequenceModel):
    """Predicts the training mean; fitted only by fit_extra (no SGD parameters)."""

    memoryless = True

    def __init__(self, config, streams, normalization):
        super().__init__(config, streams, normalization)
        self.register_buffer("value", torch.zeros(self.target_dim))
        self.fitted = False

    def forward(self, batch):
        shape = batch["dt_s"].shape + (self.target_dim,)
        return {"mean": self.value.expand(shape), "var": torch.ones(shape)}

    def step(self, tick, state):
        return self.forward(tick), state

    def fit_extra(self, train_dataset, log=print):
        self.value.copy_(self.target_mean)
        self.fitted = True


def test_a_model_without_sgd_parameters_is_fitted_by_fit_extra(tiny_log, tmp_path):
    from seqsense.models.base import register_model

    register_model("_const", _ConstConfig)(_ConstModel)
    try:
        res = train("_const", [tiny_log], {"window": 8}, tmp_path / "c", progress=False, log=lambda m: None)
    finally:
        MODELS.pop("_const")
    assert res.steps == 0 and res.model.fitted and res.num_parameters == 0
    torch.testing.assert_close(res.model.value, res.model.target_mean)
    assert (tmp_path / "c" / "best.json").exists()


def _write_log_without_target(path):
    with LogWriter(path) as log:
        ep = log.episode("ep_x")
        t = seconds_to_ns(np.arange(40) / 20.0)
        ep.write_stream("camera", "image", t, np.zeros((40, 16, 16, 1), np.uint8), rate_hz=20.0)
    return path


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "nope"], "valid models: .*framewise.*rnn.*transformer"),
        (["--model", "rnn", "--inputs", "lidar"], "Unknown input stream 'lidar'.*camera"),
        (["--model", "rnn", "--target", "truth/vel"], "Unknown target stream 'truth/vel'.*truth/pos"),
        (["--model", "rnn", "--set", "window=500"], "fewer than the window of 500"),
        (["--model", "rnn", "--set", "hidden=many"], "hidden='many' is not a valid int"),
        (["--model", "rnn", "--set", "colour=red"], "unknown key 'colour'; valid keys:"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_problem(tiny_log, tmp_path, capsys, args, message):
    code = main(["train", "--data", str(tiny_log), "--out", str(tmp_path / "r"), "--no-progress", *args])
    assert code == 2
    assert re.search(message, capsys.readouterr().err), message


def test_target_missing_from_some_episodes(tiny_log, tmp_path):
    bad = _write_log_without_target(tmp_path / "bad.h5")
    with pytest.raises(SeqsenseError, match=r"target stream 'truth/pos' is missing from 1 of 7 episode\(s\): bad.h5:ep_x"):
        train("rnn", [tiny_log, bad], TINY, tmp_path / "r", progress=False, log=lambda m: None)


def test_nan_in_a_batch_names_the_stream_and_episode(make_log, tmp_path):
    log = make_log("nan.h5", episodes=3, nan_at=(1, 30))
    with pytest.raises(SeqsenseError, match=r"NaN/Inf in input stream 'imu' \(Log '.*nan.h5' episode 'ep_001'"):
        train("rnn", [log], {**TINY, "steps": 30, "val_fraction": 0.0}, tmp_path / "r", inputs=["imu"], progress=False, log=lambda m: None)


def test_cli_trains_and_reports(tiny_log, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train", "--model", "transformer", "--data", str(tiny_log), "--inputs", "camera,imu", "--out", str(out), "--no-progress",
                 "--set", "steps=6", "--set", "hidden=16", "--set", "window=8", "--set", "frame_channels=4", "--device", "cpu"])
    assert code == 0
    assert "transformer:" in capsys.readouterr().out
    model = load_checkpoint(out / "best")
    assert model.config.inputs == ("camera", "imu") and model.family == "transformer"


def test_label_target_infers_num_classes(tiny_log, tmp_path):
    res = train("rnn", [tiny_log], {**TINY, "steps": 5}, tmp_path / "r", inputs=["imu"], target="truth/side", progress=False, log=lambda m: None)
    assert res.config.num_classes == 2 and res.model.discrete
    pred = res.model.predictor()
    pred.reset()
    out = pred.step_tick(next(WindowDataset(episode_refs([tiny_log]), res.config.window_spec()).iter_ticks(0)))
    assert out.probs.shape == (2,) and abs(out.probs.sum() - 1) < 1e-5


def test_a_best_checkpoint_from_before_fit_extra_gets_fitted_too(tiny_log, tmp_path, monkeypatch):
    """When validation peaks before the last step, the returned (best) model still has its fit_extra.

    Validation is rigged to be best at the first check, so `best` is written before the CV filter is
    fitted; the run must fit it too rather than return a detector with the filter's start values.
    """
    import seqsense.train as tr

    scores = iter([1.0] + [5.0] * 10)
    real = tr.evaluate_loss
    monkeypatch.setattr(tr, "evaluate_loss", lambda model, ds, *a, **k: next(scores) if ds is not None else real(model, ds, *a, **k))
    res = train("kalman", [tiny_log], {**TINY, "steps": 30, "dynamics": "cv", "q_steps": 5}, tmp_path / "run",
                inputs=("imu",), progress=False, log=lambda m: None)
    assert res.best_step == 10 and res.steps == 30
    for model in (res.model, load_checkpoint(tmp_path / "run" / "best")):
        assert not torch.allclose(model.r, torch.full_like(model.r, 0.1)), "best checkpoint holds an unfitted filter"
        assert not torch.allclose(model.q, torch.ones_like(model.q))


def _write_gappy_log(path, gap_of=lambda e: slice(8, 24), episodes=6, ticks=40):
    """A log whose truth has NaN gaps (motion-capture dropouts): `imu` sees the position, `truth/pos` is NaN in `gap_of(e)`."""
    rng = np.random.default_rng(0)
    with LogWriter(path, provenance={"inputs": ["imu"], "target": "truth/pos"}) as log:
        for e in range(episodes):
            ep = log.episode(f"ep_{e:03d}")
            t = seconds_to_ns(np.arange(ticks) / 20.0)
            pos = np.cumsum(rng.normal(size=(ticks, 2)) * 0.05, axis=0).astype(np.float32)
            truth = pos.copy()
            truth[gap_of(e)] = np.nan
            ep.write_stream("imu", "vector", t, pos + 0.01 * rng.standard_normal(pos.shape).astype(np.float32), rate_hz=20.0)
            ep.write_stream("truth/pos", "vector", t, truth, rate_hz=20.0, allow_nan=True)
    return path


def test_validation_loss_is_the_mean_over_valid_ticks(tmp_path):
    from seqsense.train import evaluate_loss

    log = _write_gappy_log(tmp_path / "gappy.h5")  # windows 1 and 2 of every episode are NaN throughout
    knobs = {"hidden": 16, "window": 8, "batch_size": 2, "steps": 30, "val_every": 10, "val_fraction": 0.34}
    res = train("framewise", [log], knobs, tmp_path / "r", progress=False, log=lambda m: None)
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    vals = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(vals) == 3 and np.isfinite(vals).all() and np.isfinite(res.val_loss)
    assert res.best_step == 10 * (1 + int(np.argmin(vals))) and (tmp_path / "r" / "best.json").exists()
    # one value per valid tick, however the windows are batched
    val = json.loads((tmp_path / "r" / "last.json").read_text())["extra"]["split"]["val"]
    ds = WindowDataset([r for r in episode_refs([log]) if f"{log.name}:{r[1]}" in val], res.config.window_spec())
    losses = [evaluate_loss(res.model, ds, torch.device("cpu"), b) for b in (1, 2, 3, 64)]
    np.testing.assert_allclose(losses, losses[0], rtol=1e-5)


def test_a_validation_split_without_valid_ticks_selects_the_last_step(tmp_path):
    from seqsense.dataset import split_episodes

    refs = episode_refs([_write_gappy_log(tmp_path / "probe.h5")])
    _, val = split_episodes(refs, 0.34, 0)
    blind = {int(e.removeprefix("ep_")) for _, e in val}
    log = _write_gappy_log(tmp_path / "blind.h5", gap_of=lambda e: slice(None) if e in blind else slice(0, 0))
    notes = []
    knobs = {"hidden": 16, "window": 8, "batch_size": 4, "steps": 20, "val_every": 5, "val_fraction": 0.34}
    res = train("framewise", [log], knobs, tmp_path / "r", progress=False, log=notes.append)
    assert sum("hold no valid tick of target 'truth/pos'" in n for n in notes) == 1
    assert res.best_step == res.steps == 20 and np.isnan(res.val_loss)
    assert json.loads((tmp_path / "r" / "best.json").read_text())["extra"]["step"] == 20


def test_steps_0_is_refused_for_families_trained_by_gradient_steps(tiny_log, tmp_path, capsys):
    code = main(["train", "--model", "rnn", "--data", str(tiny_log), "--out", str(tmp_path / "r"), "--no-progress",
                 "--set", "steps=0", "--set", "window=8"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'rnn' trains by gradient steps" in err and "steps=N with N >= 1" in err and "kalman" in err and "ekf" in err
    assert not (tmp_path / "r").exists()
    # a filter fitted in closed form (kalman on the raw measurement, EM) has nothing to train by SGD: steps=0 is fine
    path = tmp_path / "lg.h5"
    rng = np.random.default_rng(0)
    with LogWriter(path) as log:
        for e in range(4):
            ep = log.episode(f"ep_{e:03d}")
            t = seconds_to_ns(np.arange(40) / 20.0)
            pos = np.cumsum(rng.normal(size=(40, 2)) * 0.05, axis=0).astype(np.float32)
            ep.write_stream("measurement", "vector", t, pos + 0.1 * rng.standard_normal(pos.shape).astype(np.float32), rate_hz=20.0)
            ep.write_stream("truth/pos", "vector", t, pos, rate_hz=20.0)
    code = main(["train", "--model", "kalman", "--data", str(path), "--inputs", "measurement", "--target", "truth/pos",
                 "--out", str(tmp_path / "k"), "--no-progress", "--set", "steps=0", "--set", "dynamics=em",
                 "--set", "em_iters=2", "--set", "window=8"])
    assert code == 0 and (tmp_path / "k" / "best.json").exists()
