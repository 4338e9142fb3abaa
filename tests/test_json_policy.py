"""One JSON policy: every JSON file and attribute seqsense writes is strict, and reads back as written."""

from __future__ import annotations

import json
import dataclasses
import math

import numpy as np
import pytest

from seqsense.cli import main
from seqsense.config import config_from_dict, config_to_dict
from seqsense.dataset import WindowDataset, compute_normalization, episode_refs
from seqsense.fileio import from_json, to_json
from seqsense.models import MODELS
from seqsense.models.checkpoint import load_checkpoint, read_train_state_info, save_checkpoint


def strict_loads(text: str):
    """Parse `text` as standard JSON: the NaN/Infinity literals are an error."""

    def refuse(literal):
        raise ValueError(f"non-standard JSON literal {literal}")

    return json.loads(text, parse_constant=refuse)


def _rnn(log_path, **overrides):
    model_cls, config_cls = MODELS["rnn"]
    config = config_cls(inputs=("imu",), target="truth/pos", hidden=8, window=8, **overrides)
    ds = WindowDataset(episode_refs([log_path]), config.window_spec())
    return model_cls(config, ds.stream_info(), compute_normalization(ds))


def test_to_json_is_strict_and_from_json_reads_it_back():
    data = {"nan": math.nan, "inf": np.float32("inf"), "ninf": -math.inf, "xs": np.array([1.5, np.nan]),
            "n": np.int64(3), "ok": np.bool_(True), "t": (1, 2), 4: "int key"}
    text = to_json(data)
    assert strict_loads(text) == from_json(text) == {
        "nan": None, "inf": None, "ninf": None, "xs": [1.5, None], "n": 3, "ok": True, "t": [1, 2], "4": "int key"}
    assert from_json('{"a": Infinity, "b": NaN, "c": -Infinity}') == {"a": None, "b": None, "c": None}  # older files


def test_config_unbounded_float_round_trips():
    _, config_cls = MODELS["rnn"]
    config = config_cls(inputs=("imu",), target="truth/pos", max_age_s=math.inf, rate_hz=None)
    d = config_to_dict(config)
    assert d["max_age_s"] is None and d["rate_hz"] is None and d["inputs"] == ["imu"]
    back = config_from_dict(config_cls, strict_loads(to_json(d)))
    assert back == config and back.max_age_s == math.inf and back.rate_hz is None
    assert config_from_dict(config_cls, config_to_dict(config_cls(max_age_s=0.25))).max_age_s == 0.25


def test_checkpoint_with_unbounded_age_is_strict_json(tiny_log, tmp_path):
    model = _rnn(tiny_log, max_age_s=math.inf)
    _, meta_path = save_checkpoint(model, tmp_path / "m", extra={"val_loss": math.nan, "step": 3})
    meta = strict_loads(meta_path.read_text())
    assert meta["config"]["max_age_s"] is None and meta["extra"] == {"val_loss": None, "step": 3}
    loaded = load_checkpoint(tmp_path / "m")
    assert loaded.config.max_age_s == math.inf and loaded.config == model.config
    assert loaded.checkpoint_meta == meta  # reading gives back what was written
    for name, info in model.streams.items():  # an unknown rate (NaN, written as null) reads back as NaN
        got = loaded.streams[name].rate_hz
        assert (math.isnan(got) and math.isnan(info.rate_hz)) or got == info.rate_hz


def test_unknown_stream_rate_survives_a_checkpoint(tiny_log, tmp_path):
    model = _rnn(tiny_log)
    name = next(iter(model.streams))
    model.streams[name] = dataclasses.replace(model.streams[name], rate_hz=math.nan)
    save_checkpoint(model, tmp_path / "m")
    assert math.isnan(load_checkpoint(tmp_path / "m").streams[name].rate_hz)


def test_checkpoint_written_with_infinity_literals_still_loads(tiny_log, tmp_path):
    model = _rnn(tiny_log, max_age_s=math.inf)
    _, meta_path = save_checkpoint(model, tmp_path / "m")
    meta = json.loads(meta_path.read_text())
    meta["config"]["max_age_s"] = math.inf
    meta_path.write_text(json.dumps(meta))  # as seqsense wrote it before strict JSON: `Infinity`
    assert "Infinity" in meta_path.read_text()
    assert load_checkpoint(tmp_path / "m").config.max_age_s == math.inf


def test_train_state_without_validation_resumes(tiny_log, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "framewise", "--data", str(tiny_log), "--out", str(out), "--no-progress",
            "--set", "hidden=8", "--set", "window=4", "--set", "frame_channels=2", "--set", "val_fraction=0"]
    assert main(args + ["--set", "steps=2"]) == 0
    for name in ("train_state.json", "best.json", "last.json"):
        strict_loads((out / name).read_text())
    info = strict_loads((out / "train_state.json").read_text())
    assert info["best_val"] is None and info["config"]["max_age_s"] is None  # no validation: best loss unbounded
    assert read_train_state_info(out / "train_state")["best_val"] == math.inf
    assert main(args + ["--set", "steps=4", "--resume"]) == 0


def test_export_manifest_with_nan_metrics_is_strict_json(tiny_log, tmp_path, capsys):
    from seqsense.export import export_model

    model = _rnn(tiny_log).eval()
    meta = {"extra": {"data": [str(tiny_log)], "val_loss": math.nan, "best": np.float32("inf")}}
    man = export_model(model, tmp_path / "exp", meta, parity_ticks=10, log=lambda m: None)
    text = (tmp_path / "exp" / "manifest.json").read_text()
    assert strict_loads(text) == man
    assert man["provenance"]["training"]["val_loss"] is None and man["provenance"]["training"]["best"] is None
    assert man["config"]["max_age_s"] is None and man["streams"]["imu"]["max_age_s"] is None


def test_cli_export_json_is_strict(tiny_log, tmp_path, capsys):
    model = _rnn(tiny_log)
    (tmp_path / "run").mkdir()
    save_checkpoint(model, tmp_path / "run" / "best", extra={"data": [str(tiny_log)], "val_loss": math.nan})
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp"), "--json"]) == 0
    man = strict_loads(capsys.readouterr().out)
    assert man["provenance"]["training"]["val_loss"] is None


def test_eval_summary_with_nan_metrics_is_strict_json(tiny_log, tmp_path, monkeypatch):
    import seqsense.evaluate.offline as offline

    save_checkpoint(_rnn(tiny_log), tmp_path / "best")
    real = offline.mean_row
    monkeypatch.setattr(offline, "mean_row", lambda rows: {**real(rows), "rmse": math.nan, "lag_s": np.float64("inf")})
    summary = offline.evaluate_runs([tmp_path / "best"], [tiny_log], tmp_path / "eval", progress=False)
    written = strict_loads((tmp_path / "eval" / "summary.json").read_text())
    assert math.isnan(summary["models"]["best"]["rmse"])
    assert written["models"]["best"]["rmse"] is None and written["models"]["best"]["lag_s"] is None
    assert written == from_json(to_json(summary))


def test_log_json_attributes_are_strict(tmp_path):
    import h5py

    from seqsense.log import LogWriter, open_log

    path = tmp_path / "a.h5"
    with LogWriter(path, provenance={"gain": math.nan, "limit": math.inf, "where": tmp_path}) as w:
        ep = w.episode("ep_000", provenance={"offsets": np.array([0.5, np.nan])})
        ep.write_stream("imu", "vector", np.arange(3), np.zeros((3, 2)), fields=["a", "b"], rate_hz=10,
                        attrs={"bias": {"x": math.nan}})
    with h5py.File(path, "r") as f:
        for attrs in (f.attrs, f["episodes/ep_000"].attrs, f["episodes/ep_000/imu"].attrs):
            for key, value in attrs.items():
                if isinstance(value, str) and value.startswith(("[", "{")):
                    strict_loads(value)
        assert strict_loads(f["episodes/ep_000/imu"].attrs["bias"]) == {"x": None}
    log = open_log(path)
    assert log.provenance == {"gain": None, "limit": None, "where": str(tmp_path)}
    assert log.episode("ep_000").provenance == {"offsets": [0.5, None]}
    log.close()
