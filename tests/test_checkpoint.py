"""Checkpoints: atomic safetensors + JSON pairs, and clear errors on missing or damaged files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seqsense.cli import main
from seqsense.dataset import WindowDataset, compute_normalization, episode_refs
from seqsense.errors import CheckpointError, SeqsenseError
from seqsense.models import MODELS
from seqsense.models.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from seqsense.train import check_finite


@pytest.fixture
def saved(tiny_log, tmp_path):
    """A small rnn saved as tmp_path/m.{safetensors,json}; returns (model, stem)."""
    model_cls, config_cls = MODELS["rnn"]
    config = config_cls(inputs=("imu",), target="truth/pos", hidden=8, window=8)
    ds = WindowDataset(episode_refs([tiny_log]), config.window_spec())
    model = model_cls(config, ds.stream_info(), compute_normalization(ds))
    save_checkpoint(model, tmp_path / "m", extra={"step": 3})
    return model, tmp_path / "m"


def test_round_trip_and_metadata(saved, tmp_path):
    model, stem = saved
    meta = read_checkpoint_meta(stem)
    assert meta["family"] == "rnn" and meta["config"]["hidden"] == 8 and meta["extra"] == {"step": 3}
    assert set(meta["versions"]) >= {"seqsense", "torch"} and meta["normalization"]["imu"]["mean"]
    assert meta["streams"]["truth/pos"]["kind"] == "vector"
    for path in (stem, stem.with_suffix(".json"), tmp_path / "m.safetensors"):
        loaded = load_checkpoint(path)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[k], v)
    assert not list(tmp_path.glob(".*partial")), "temporary files left behind"


def test_missing_files(saved, tmp_path):
    _, stem = saved
    with pytest.raises(CheckpointError, match="nothere.json' does not exist"):
        load_checkpoint(tmp_path / "nothere")
    (tmp_path / "m.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"m.safetensors' do not exist"):
        load_checkpoint(stem)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_weights(saved, tmp_path, damage):
    _, stem = saved
    path = tmp_path / "m.safetensors"
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":
        blob[-10] ^= 0xFF
    else:
        blob = bytearray(b"not a safetensors file at all")
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="m.safetensors.*truncated or corrupted"):
        load_checkpoint(stem)


def test_weights_unreadable_even_without_checksum(saved, tmp_path):
    _, stem = saved
    meta = json.loads((tmp_path / "m.json").read_text())
    meta["weights_sha256"] = None
    (tmp_path / "m.json").write_text(json.dumps(meta))
    (tmp_path / "m.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        load_checkpoint(stem)


def test_damaged_json(saved, tmp_path):
    _, stem = saved
    text = (tmp_path / "m.json").read_text()
    (tmp_path / "m.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="m.json' is not valid JSON.*truncated or corrupted"):
        load_checkpoint(stem)
    meta = json.loads(text)
    meta["family"] = "nope"
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot rebuild model 'nope'.*valid models"):
        load_checkpoint(stem)
    meta["family"], meta["config"]["hidden"] = "rnn", 12
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit model 'rnn'.*wrong shapes"):
        load_checkpoint(stem)


def test_corrupted_checkpoint_on_resume_exits_2(tiny_log, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "framewise", "--data", str(tiny_log), "--out", str(out), "--no-progress",
            "--set", "steps=2", "--set", "hidden=8", "--set", "window=4", "--set", "frame_channels=2"]
    assert main(args) == 0
    (out / "train_state.safetensors").write_bytes(b"\x00" * 10)
    assert main(args + ["--resume"]) == 2
    assert "train_state.safetensors" in capsys.readouterr().err


def test_check_finite_names_stream_and_window():
    batch = {"imu": torch.zeros(2, 3, 2), "imu_age_s": torch.zeros(2, 3), "target": torch.full((2, 3, 2), np.nan)}
    check_finite(batch, lambda b: f"window {b}")  # NaN targets are masked, not an error
    batch["imu_age_s"][1, 2] = np.inf
    with pytest.raises(SeqsenseError, match=r"input stream 'imu' \(window 1, tick 2 of the window\)"):
        check_finite(batch, lambda b: f"window {b}")
