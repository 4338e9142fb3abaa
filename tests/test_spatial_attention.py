"""The transformer's factorized frame encoder: spatial attention per frame, temporal attention across frames."""

import numpy as np
import torch

from seqsense import runtime
from seqsense.config import apply_overrides
from seqsense.dataset import WindowDataset, compute_normalization, episode_refs
from seqsense.export import export_model
from seqsense.export.check import run_parity
from seqsense.models import MODELS
from seqsense.models.checkpoint import load_checkpoint, save_checkpoint
from seqsense.models.encoders import SpatialAttentionEncoder


def _model(log_path, **extra):
    model_cls, config_cls = MODELS["transformer"]
    config = apply_overrides(
        config_cls(),
        {"inputs": ("camera",), "target": "truth/pos", "hidden": 16, "window": 8, "spatial_attention": True, "patch": 4, **extra},
    )
    ds = WindowDataset(episode_refs([log_path]), config.window_spec(window=1))
    torch.manual_seed(0)
    return model_cls(config, ds.stream_info(), compute_normalization(ds)).eval(), ds


def test_patches_attend_within_one_frame():
    enc = SpatialAttentionEncoder((10, 12, 3), out_dim=8, patch=4)  # padded to 12×12: 3×3 patches
    frames = torch.randint(0, 255, (5, 10, 12, 3), dtype=torch.uint8)
    out = enc(frames)
    assert out.shape == (5, 8) and torch.isfinite(out).all()
    other = frames.clone()
    other[1] = 0  # changing one frame changes only that frame's token
    diff = (enc(other) - out).abs().sum(1)
    assert diff[1] > 0 and torch.all(diff[[0, 2, 3, 4]] == 0)


def test_step_equals_predict_and_round_trip(tiny_log, tmp_path):
    model, ds = _model(tiny_log)
    assert any(isinstance(m, SpatialAttentionEncoder) for m in model.modules())
    seq = ds.sequence(0)
    offline = model.predict(seq)["mean"]
    pred = model.predictor()
    streamed = np.stack([pred.step_tick({k: v for k, v in t.items() if not k.startswith("target")}).mean for t in ds.iter_ticks(0)])
    np.testing.assert_allclose(streamed, offline, rtol=1e-5, atol=1e-5)
    save_checkpoint(model, tmp_path / "m")
    again = load_checkpoint(tmp_path / "m")
    np.testing.assert_allclose(again.predict(seq)["mean"], offline, rtol=1e-6, atol=1e-6)


def test_export_parity(tiny_log, tmp_path):
    model, ds = _model(tiny_log)
    export_model(model, tmp_path / "exp", {"extra": {"data": [str(tiny_log)]}}, parity_ticks=20, log=lambda m: None)
    report = run_parity(model, runtime.load(tmp_path / "exp"), [list(ds.iter_ticks(k)) for k in range(2)])
    assert report["failure"] is None and report["max_rel_err"] < 1e-4, report


def test_spatial_attention_transformer_learns(make_log, tmp_path):
    from seqsense.train import train

    log = make_log("learn.h5", episodes=8, ticks=60, noise=0.02)
    losses = []
    overrides = {"steps": 300, "hidden": 16, "window": 8, "batch_size": 8, "spatial_attention": True, "patch": 4, "lr": 3e-3, "val_every": 300}
    res = train("transformer", [log], overrides, tmp_path / "run", progress=False, log=lambda *_: None, on_step=lambda s, l: losses.append(l))
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 1.0  # the Gaussian NLL falls clearly
    ds = WindowDataset(episode_refs([log]), res.model.config.window_spec(window=1))
    seq = ds.sequence(0)
    err = np.mean((res.model.predict(seq)["mean"] - seq["target"]) ** 2)
    baseline = np.mean((seq["target"] - seq["target"].mean(0)) ** 2)
    # Beats predicting the episode's own mean (slower to learn than the CNN: no convolutional prior).
    assert err < 0.6 * baseline
