"""The contract every registered model family follows (parametrized over seqsense.models.MODELS)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

import seqsense.models  # noqa: F401  (registers every family)
from seqsense.config import apply_overrides
from seqsense.dataset import WindowDataset, compute_normalization, episode_refs, make_loader
from seqsense.errors import ConfigError
from seqsense.models import MODELS
from seqsense.models.checkpoint import load_checkpoint, save_checkpoint

# name -> (inputs, target, extra config)
SETUPS = {
    "vector": (("imu",), "truth/pos", {}),
    "frames": (("camera", "imu"), "truth/pos", {}),
    "label": (("imu",), "truth/side", {"num_classes": 2}),
}
TINY = {"hidden": 16, "frame_channels": 4, "window": 8, "batch_size": 4}
_BUILT: dict = {}


def _build(family: str, setup: str, log_path):
    """A small fitted-as-needed model of `family` on `setup`, with its dataset (cached per test run)."""
    key = (family, setup, str(log_path))
    if key not in _BUILT:
        model_cls, config_cls = MODELS[family]
        inputs, target, extra = SETUPS[setup]
        fields = {f.name for f in dataclasses.fields(config_cls)}
        knobs = {k: v for k, v in {**TINY, **extra}.items() if k in fields}
        config = apply_overrides(config_cls(), {"inputs": inputs, "target": target, **knobs})
        ds = WindowDataset(episode_refs([log_path]), config.window_spec())
        streams = ds.stream_info()
        kinds_in = {streams[s].kind for s in inputs}
        if not kinds_in <= set(model_cls.input_kinds) or streams[target].kind not in model_cls.target_kinds:
            _BUILT[key] = None
        else:
            torch.manual_seed(0)
            try:
                model = model_cls(config, streams, compute_normalization(ds))
            except ConfigError as e:
                pytest.fail(
                    f"{family} refuses the {setup} setup ({e}) although it declares input_kinds={model_cls.input_kinds}, "
                    f"target_kinds={model_cls.target_kinds}; narrow those class attributes to what it supports."
                )
            model.fit_extra(ds, log=lambda *a, **k: None)
            _BUILT[key] = (model.eval(), ds)
    if _BUILT[key] is None:
        pytest.skip(f"{family} does not take the {setup} setup")
    return _BUILT[key]


CASES = [(f, s) for f in sorted(MODELS) for s in SETUPS]


@pytest.mark.parametrize("family,setup", CASES)
def test_forward_shapes_and_finite(family, setup, tiny_log):
    model, ds = _build(family, setup, tiny_log)
    batch = next(iter(make_loader(ds, batch_size=4, shuffle=False)))
    out = model(batch)
    b, t = batch["t_ns"].shape
    if model.discrete:
        assert out["logits"].shape == (b, t, model.num_classes)
        assert torch.isfinite(out["logits"]).all()
    else:
        assert out["mean"].shape == (b, t, model.target_dim) == out["var"].shape
        assert torch.isfinite(out["mean"]).all() and (out["var"] > 0).all() and torch.isfinite(out["var"]).all()
    loss = model.loss(batch)
    assert loss.shape == () and torch.isfinite(loss)
    if model.trains_by_sgd:
        loss.backward()
        assert any(p.grad is not None for p in model.parameters())
        model.zero_grad()
    assert isinstance(model.num_parameters(), int) and model.num_parameters() >= 0


@pytest.mark.parametrize("family,setup", CASES)
def test_step_loop_equals_offline_predict(family, setup, tiny_log):
    model, ds = _build(family, setup, tiny_log)
    seq = ds.sequence(0)  # 40 ticks: longer than the 8-tick window, so context sliding is exercised
    offline = model.predict(seq)
    key = "logits" if model.discrete else "mean"
    with torch.no_grad():
        state = model.init_state(1)
        steps = []
        for tick in ds.iter_ticks(0):
            out, state = model.step({k: torch.as_tensor(v).unsqueeze(0) for k, v in tick.items()}, state)
            steps.append({k: v[0].numpy() for k, v in out.items()})
    for k in offline:
        np.testing.assert_allclose(np.stack([s[k] for s in steps]), offline[k], atol=1e-5, rtol=1e-5, err_msg=f"{family}/{setup} {k}")
    # the numpy predictor (what robot loops call) gives the same numbers, and reset() forgets state
    pred = model.predictor()
    for _ in range(2):
        pred.reset()
        got = [pred.step(tick) for tick in ds.iter_ticks(0)]
        if model.discrete:
            probs = torch.softmax(torch.as_tensor(offline[key]), -1).numpy()
            np.testing.assert_allclose(np.stack([g.probs for g in got]), probs, atol=1e-5)
        else:
            np.testing.assert_allclose(np.stack([g.mean for g in got]), offline["mean"], atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(np.stack([g.var for g in got]), offline["var"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family,setup", CASES)
def test_save_load_round_trip(family, setup, tiny_log, tmp_path):
    model, ds = _build(family, setup, tiny_log)
    save_checkpoint(model, tmp_path / "m", extra={"note": "contract"})
    loaded = load_checkpoint(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.checkpoint_meta["extra"] == {"note": "contract"}
    seq = ds.sequence(1)
    a, b = model.predict(seq), loaded.predict(seq)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("family", sorted(MODELS))
def test_config_validates_itself(family):
    _, config_cls = MODELS[family]
    config_cls()  # defaults are valid
    with pytest.raises(ConfigError, match="window"):
        config_cls(window=0)
    with pytest.raises(ConfigError, match="valid keys"):
        apply_overrides(config_cls(), {"no_such_knob": "1"})


@pytest.mark.parametrize("family", sorted(MODELS))
def test_memoryless_flag_is_honest(family, tiny_log):
    model, ds = _build(family, "vector", tiny_log)
    if not model.memoryless:
        pytest.skip("has memory")
    seq = ds.sequence(0)
    rev = {k: v[::-1].copy() for k, v in seq.items()}
    a, b = model.predict(seq), model.predict(rev)
    np.testing.assert_allclose(a["mean"][::-1], b["mean"], atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile needs a C++ compiler")
@pytest.mark.parametrize("family", sorted(MODELS))
def test_compiled_predictor_equals_eager(family, tiny_log):
    model, ds = _build(family, "vector", tiny_log)
    eager, compiled = model.predictor(), model.predictor(compile=True)
    for _ in range(2):  # twice: reset() must also work on the compiled one
        eager.reset()
        compiled.reset()
        for tick in ds.iter_ticks(0):
            a, b = eager.step(tick), compiled.step(tick)
            np.testing.assert_allclose(b.mean, a.mean, atol=1e-5, rtol=1e-5, err_msg=family)
            np.testing.assert_allclose(b.var, a.var, atol=1e-5, rtol=1e-5, err_msg=family)
