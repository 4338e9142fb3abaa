"""seqsense export: every registered family exports one `step` whose runtime matches the torch predictor.

Parity is checked over whole episodes of a tiny tracking log (the held-out ones and the rest), with
untrained tiny models built straight from the model classes: parity needs no training.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import seqsense.models  # noqa: F401  (registers every family)
from seqsense import runtime
from seqsense.cli import main
from seqsense.config import apply_overrides
from seqsense.dataset import WindowDataset, compute_normalization, episode_refs
from seqsense.errors import SeqsenseError
from seqsense.export import export_model
from seqsense.export.check import run_parity
from seqsense.models import MODELS
from seqsense.models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SETUPS = {
    "vector": (("imu",), "truth/pos", {}),
    "packed": (("imu",), "truth/pos", {"packed": {"imu": 3}}),
    "frames": (("camera", "imu"), "truth/pos", {}),
    "label": (("imu",), "truth/side", {"num_classes": 2}),
}
TINY = {"hidden": 8, "frame_channels": 2, "window": 8}


def _model(family: str, setup: str, log_path, twin: bool = False):
    """An untrained tiny model of `family` (or its memoryless twin) on `setup` and the dataset of the log (None if the family refuses it)."""
    model_cls, config_cls = MODELS[family]
    inputs, target, extra = SETUPS[setup]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    knobs = {k: v for k, v in {**TINY, **extra}.items() if k in fields}
    if twin:
        knobs.update(model_cls.twin_overrides())
    config = apply_overrides(config_cls(), {"inputs": inputs, "target": target, **knobs})
    ds = WindowDataset(episode_refs([log_path]), config.window_spec(window=1))
    streams = ds.stream_info()
    if streams[target].kind not in model_cls.target_kinds or any(streams[s].kind not in model_cls.input_kinds for s in inputs):
        return None, ds
    torch.manual_seed(0)
    try:
        return model_cls(config, streams, compute_normalization(ds)).eval(), ds
    except SeqsenseError:
        return None, ds


def _whole_episodes(ds) -> list[list[dict]]:
    return [list(ds.iter_ticks(k)) for k in range(len(ds.episodes))]


def _export_and_compare(family, setup, log_path, tmp_path, twin: bool = False):
    model, ds = _model(family, setup, log_path, twin)
    if model is None:
        pytest.skip(f"{family} does not take the {setup} setup")
    man = export_model(model, tmp_path / "exp", {"extra": {"data": [str(log_path)]}}, parity_ticks=40, log=lambda m: None)
    report = run_parity(model, runtime.load(tmp_path / "exp"), _whole_episodes(ds))
    assert report["failure"] is None, report
    assert report["ticks"] == sum(ds.lengths)
    return man, report


@pytest.mark.parametrize("family", sorted(MODELS))
def test_parity_every_family(family, tiny_log, tmp_path):
    man, report = _export_and_compare(family, "vector", tiny_log, tmp_path)
    assert man["family"] == family and man["parity"]["ticks"] == 40
    assert report["max_rel_err"] < 1e-4


@pytest.mark.parametrize("family", [f for f in sorted(MODELS) if MODELS[f][0].twin_overrides()])
def test_parity_every_twin(family, tiny_log, tmp_path):
    """A memoryless twin exports with no state, its manifest config says so, and the runtime matches it."""
    man, report = _export_and_compare(family, "vector", tiny_log, tmp_path, twin=True)
    assert man["config"]["memoryless"] is True and man["graph"]["state"] == []
    assert report["max_rel_err"] < 1e-4


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("setup", ["packed", "label"])
def test_parity_packed_and_label(family, setup, tiny_log, tmp_path):
    _export_and_compare(family, setup, tiny_log, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(MODELS))
def test_parity_frames(family, tiny_log, tmp_path):
    _export_and_compare(family, "frames", tiny_log, tmp_path)


def test_parity_frames_fast(tiny_log, tmp_path):
    _export_and_compare("transformer", "frames", tiny_log, tmp_path)


def test_kalman_with_the_logs_linear_system(tmp_path):
    from seqsense.scenarios import generate

    log = generate("linear_gaussian", tmp_path / "lg.h5", episodes=2, seed=0, duration_s=3.0)
    model_cls, config_cls = MODELS["kalman"]
    config = config_cls(inputs=("measurement",), target="truth/position", hidden=8, window=4)
    ds = WindowDataset(episode_refs([log]), config.window_spec(window=1))
    model = model_cls(config, ds.stream_info(), compute_normalization(ds))
    model.fit_extra(ds, log=lambda m: None)
    assert model.uses_metadata
    export_model(model.eval(), tmp_path / "exp", {"extra": {"data": [str(log)]}}, parity_ticks=20, log=lambda m: None)
    report = run_parity(model, runtime.load(tmp_path / "exp"), _whole_episodes(ds))
    assert report["failure"] is None and report["max_rel_err"] < 1e-4, report


def test_manifest_schema(tiny_log, tmp_path):
    model, _ = _model("transformer", "packed", tiny_log)
    man = export_model(model, tmp_path / "exp", {"extra": {"data": [str(tiny_log)]}, "versions": {"torch": "x"}},
                       parity_ticks=10, topics={"imu": "/imu/data"}, log=lambda m: None)
    assert man == json.loads((tmp_path / "exp" / "manifest.json").read_text())
    for key in ("format", "format_version", "family", "graph", "streams", "target", "clock", "normalization", "config",
                "provenance", "versions", "parity"):
        assert key in man
    imu = man["streams"]["imu"]
    assert imu["mode"] == "packed" and imu["packed_k"] == 3 and imu["shape"] == [2] and imu["topic"] == "/imu/data"
    assert man["clock"]["stream"] == "truth/pos" and man["clock"]["nominal_rate_hz"] == pytest.approx(20.0)
    assert man["normalization"]["in_graph"] and "imu" in man["normalization"]["stats"]
    names = [r["name"] for r in man["graph"]["observations"]]
    assert names == ["dt_s", "imu", "imu_age_s", "imu_mask"]
    state = {s["name"]: s for s in man["graph"]["state"]}
    init = model.init_state(1)
    assert set(state) == set(init)
    for k, t in init.items():
        assert state[k]["shape"] == list(t.shape) and state[k]["dtype"] == str(t.dtype).replace("torch.", "")
    assert man["versions"]["training"] == {"torch": "x"} and man["versions"]["export"]["onnx"]
    assert man["config"]["context"] == 0 and man["provenance"]["training"]["data"] == [str(tiny_log)]


def test_packed_runtime_fills_slots_newest_last(tiny_log, tmp_path):
    model, _ = _model("framewise", "packed", tiny_log)
    export_model(model, tmp_path / "exp", parity_ticks=10, log=lambda m: None)
    pred = runtime.load(tmp_path / "exp")
    x = np.array([[1.0, 2.0], [3.0, np.nan], [5.0, 6.0], [7.0, 8.0]], np.float32)
    pred.step(0, {"imu": x, "imu_age_s": np.array([0.3, 0.2, 0.1, 0.0])})  # 4 > K=3: the newest 3, NaN row masked
    np.testing.assert_array_equal(pred.tick["imu_mask"][0], [False, True, True])
    np.testing.assert_array_equal(pred.tick["imu"][0], [[0, 0], [5, 6], [7, 8]])
    np.testing.assert_allclose(pred.tick["imu_age_s"][0], [0, 0.1, 0.0])
    pred.step(1, {"imu": x[:1]})
    np.testing.assert_array_equal(pred.tick["imu_mask"][0], [False, False, True])
    pred.step(2, {"imu": None})
    assert not pred.tick["imu_mask"].any() and pred.rejected["imu"] == 1


@pytest.mark.parametrize("case", sorted(p.name for p in GOLDEN.iterdir() if (p / "checkpoint.json").exists()))
def test_reexport_of_golden_checkpoint_matches_expected(case, tmp_path):
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "scripts" / "make_golden.py")
    tools = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tools)
    model = load_checkpoint(GOLDEN / case / "checkpoint")
    episodes = tools.npz_to_episodes(np.load(GOLDEN / case / "ticks.npz"))
    export_model(model, tmp_path / "exp", parity_ticks=episodes, log=lambda m: None)
    pred, expected = runtime.load(tmp_path / "exp"), np.load(GOLDEN / case / "expected.npz")
    for e, ticks in enumerate(episodes):
        pred.reset()
        outs = [pred.step_tick(t) for t in ticks]
        for h in ("probs",) if pred.discrete else ("mean", "var"):
            np.testing.assert_allclose(np.stack([getattr(o, h) for o in outs]), expected[f"{e}:{h}"], rtol=1e-4, atol=1e-6)


def test_cli_export_of_a_training_run(tiny_log, tmp_path, capsys):
    from seqsense.train import train

    run = train("rnn", [tiny_log], {"hidden": 8, "window": 8, "steps": 2, "batch_size": 4, "val_every": 2},
                tmp_path / "run", inputs=["imu"], target="truth/pos", progress=False, log=lambda m: None)
    out = tmp_path / "exp"
    assert main(["export", str(run.run_dir), "--out", str(out), "--opset", "17"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["provenance"]["checkpoint"].endswith("best.json") and man["provenance"]["training"]["split"]["val"]
    assert man["parity"]["ticks_from"].endswith("of the training logs")
    assert main(["export", str(run.run_dir), "--out", str(out)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_cli_export_bad_run_dirs(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "e1")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "e2")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_failed_check_leaves_nothing(tiny_log, tmp_path, monkeypatch):
    import seqsense.export as ex

    def broken(*a, **k):
        raise SeqsenseError("onnxruntime disagrees")

    monkeypatch.setattr(ex, "check_export", broken)
    model, _ = _model("rnn", "vector", tiny_log)
    with pytest.raises(SeqsenseError, match="disagrees"):
        export_model(model, tmp_path / "exp", parity_ticks=5, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []
