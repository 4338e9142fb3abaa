"""The contract every registered model family follows (parametrized over seqsense.models.MODELS), and its memoryless twin's."""

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

# name -> (log, inputs, target, extra config); "imu" is a raw gyro + accelerometer log with a 3-D target
SETUPS = {
    "vector": ("tracking", ("imu",), "truth/pos", {}),
    "frames": ("tracking", ("camera", "imu"), "truth/pos", {}),
    "label": ("tracking", ("imu",), "truth/side", {"num_classes": 2}),
    "imu": ("imu", ("gyro", "accel"), "truth/gravity_body", {}),
}
TINY = {"hidden": 16, "frame_channels": 4, "window": 8, "batch_size": 4, "q_steps": 20, "fit_epochs": 1}
_BUILT: dict = {}


@pytest.fixture(scope="session")
def logs(tiny_log, tmp_path_factory):
    """The logs of the setups: the tiny tracking log and a tiny imu_motion log (3 episodes of 50 ticks)."""
    from seqsense.scenarios import generate

    imu = generate("imu_motion", tmp_path_factory.mktemp("contract") / "imu.h5", episodes=3, seed=4, duration_s=0.5)
    return {"tracking": tiny_log, "imu": imu}


def _config(family: str, setup: str, twin: bool = False):
    """The tiny config of `family` on `setup` (its memoryless twin's if `twin`)."""
    model_cls, config_cls = MODELS[family]
    _, inputs, target, extra = SETUPS[setup]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    knobs = {k: v for k, v in {**TINY, **extra}.items() if k in fields}
    return apply_overrides(config_cls(), {"inputs": inputs, "target": target, **knobs, **(model_cls.twin_overrides() if twin else {})})


def _declines(family: str, setup: str, streams) -> bool:
    """Whether the family's check_streams refuses the setup (how the study skips a cell)."""
    try:
        MODELS[family][0].check_streams(_config(family, setup), streams)
    except ConfigError:
        return True
    return False


def _build(family: str, setup: str, logs, twin: bool = False):
    """A small fitted-as-needed model of `family` (or its twin) on `setup`, with its dataset (cached per test run)."""
    key = (family, setup, twin, str(logs[SETUPS[setup][0]]))
    if key not in _BUILT:
        model_cls, _ = MODELS[family]
        config = _config(family, setup, twin)
        ds = WindowDataset(episode_refs([logs[SETUPS[setup][0]]]), config.window_spec())
        streams = ds.stream_info()
        if _declines(family, setup, streams):
            _BUILT[key] = None
        else:
            torch.manual_seed(0)
            try:
                model = model_cls(config, streams, compute_normalization(ds))
            except ConfigError as e:
                pytest.fail(f"{family} refuses the {setup} setup ({e}) although its check_streams accepts it; "
                            "make check_streams raise for what the family cannot take.")
            model.fit_extra(ds, log=lambda *a, **k: None)
            _BUILT[key] = (model.eval(), ds)
    if _BUILT[key] is None:
        pytest.skip(f"{family} does not take the {setup} setup")
    return _BUILT[key]


def _has_twin(family: str) -> bool:
    return bool(MODELS[family][0].twin_overrides())


CASES = [(f, s, twin) for f in sorted(MODELS) for s in SETUPS for twin in (False, True) if not twin or _has_twin(f)]
IDS = [f"{f}-{s}{'-twin' if twin else ''}" for f, s, twin in CASES]


@pytest.mark.parametrize("family,setup,twin", CASES, ids=IDS)
def test_forward_shapes_and_finite(family, setup, twin, logs):
    model, ds = _build(family, setup, logs, twin)
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


@pytest.mark.parametrize("family,setup,twin", CASES, ids=IDS)
def test_step_loop_equals_offline_predict(family, setup, twin, logs):
    model, ds = _build(family, setup, logs, twin)
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
        got = [pred.step_tick(tick) for tick in ds.iter_ticks(0)]
        if model.discrete:
            probs = torch.softmax(torch.as_tensor(offline[key]), -1).numpy()
            np.testing.assert_allclose(np.stack([g.probs for g in got]), probs, atol=1e-5)
        else:
            np.testing.assert_allclose(np.stack([g.mean for g in got]), offline["mean"], atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(np.stack([g.var for g in got]), offline["var"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family,setup,twin", CASES, ids=IDS)
def test_save_load_round_trip(family, setup, twin, logs, tmp_path):
    model, ds = _build(family, setup, logs, twin)
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


def _first_setup(family: str, logs) -> str:
    """The first setup the family takes (every family takes one)."""
    for setup, (log, *_rest) in SETUPS.items():
        ds = WindowDataset(episode_refs([logs[log]]), _config(family, setup).window_spec())
        if not _declines(family, setup, ds.stream_info()):
            return setup
    pytest.fail(f"{family} takes none of the setups {list(SETUPS)}; add one it applies to.")


@pytest.mark.parametrize("family", sorted(MODELS))
def test_memoryless_flag_is_honest(family, logs):
    model, ds = _build(family, _first_setup(family, logs), logs)
    if not model.memoryless:
        pytest.skip("has memory")
    seq = ds.sequence(0)
    rev = {k: v[::-1].copy() for k, v in seq.items()}
    a, b = model.predict(seq), model.predict(rev)
    np.testing.assert_allclose(a["mean"][::-1], b["mean"], atol=1e-6)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_twin_has_the_same_parameters(family, logs):
    """Twin and full model built from one config and seed: same parameter names, shapes and values; no state."""
    model_cls, _ = MODELS[family]
    setup = _first_setup(family, logs)
    built = {}
    for twin in (False, True):
        config = _config(family, setup, twin)
        ds = WindowDataset(episode_refs([logs[SETUPS[setup][0]]]), config.window_spec())
        torch.manual_seed(0)
        built[twin] = model_cls(config, ds.stream_info(), compute_normalization(ds))
    full, twin = built[False], built[True]
    assert model_cls.twin_overrides() == ({} if model_cls.memoryless else {"memoryless": True})
    assert full.has_memory is not model_cls.memoryless and twin.has_memory is False
    assert twin.num_parameters() == full.num_parameters()
    a, b = dict(full.named_parameters()), dict(twin.named_parameters())
    assert list(a) == list(b) and list(full.state_dict()) == list(twin.state_dict())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{family}: parameter {k} differs")
    assert twin.init_state(2) == {}


def _step_outputs(model, ticks: list[dict]) -> dict[str, np.ndarray]:
    """The outputs of a loop of `step` over numpy ticks from `init_state`, at the last tick."""
    with torch.no_grad():
        state = model.init_state(1)
        for tick in ticks:
            out, state = model.step({k: torch.as_tensor(v).unsqueeze(0) for k, v in tick.items()}, state)
    return {k: v[0].numpy() for k, v in out.items()}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_twin_forgets_earlier_ticks(family, logs):
    """At `step` level, replacing the ticks before tick k by other ticks leaves the twin's output at k as it is
    and changes the full model's (so this test can fail)."""
    setup = _first_setup(family, logs)
    k = 12  # past the tiny window of 8: a transformer still sees 7 replaced ticks
    for twin in (False, True):
        if twin and not _has_twin(family):
            continue
        model, ds = _build(family, setup, logs, twin)
        own, other = list(ds.iter_ticks(0)), list(ds.iter_ticks(1))
        a = _step_outputs(model, own[: k + 1])
        b = _step_outputs(model, other[:k] + [own[k]])
        diff = max(float(np.abs(a[key] - b[key]).max()) for key in a)
        if model.has_memory:
            assert diff > 1e-4, f"{family}: the full model ignores the ticks before tick {k} (diff {diff:.2e})"
        else:
            assert diff <= 1e-6, f"{family}{' twin' if twin else ''}: tick {k}'s output depends on earlier ticks (diff {diff:.2e})"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile needs a C++ compiler")
@pytest.mark.parametrize("family", sorted(MODELS))
def test_compiled_predictor_equals_eager(family, logs):
    model, ds = _build(family, _first_setup(family, logs), logs)
    eager, compiled = model.predictor(), model.predictor(compile=True)
    for _ in range(2):  # twice: reset() must also work on the compiled one
        eager.reset()
        compiled.reset()
        for tick in ds.iter_ticks(0):
            a, b = eager.step_tick(tick), compiled.step_tick(tick)
            np.testing.assert_allclose(b.mean, a.mean, atol=1e-5, rtol=1e-5, err_msg=family)
            np.testing.assert_allclose(b.var, a.var, atol=1e-5, rtol=1e-5, err_msg=family)
