"""seqsense.runtime: torch-free import, golden outputs, input validation, NaN/missing handling, bad export folders."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqsense import runtime
from seqsense.errors import CheckpointError
from seqsense.runtime import ObservationError

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "manifest.json").exists())


def _golden_tools():
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "scripts" / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ticks(case: str) -> list[list[dict]]:
    return _golden_tools().npz_to_episodes(np.load(GOLDEN / case / "ticks.npz"))


@pytest.fixture
def rnn_dir(tmp_path):
    """A private copy of the golden rnn export (tests may damage it)."""
    return Path(shutil.copytree(GOLDEN / "rnn", tmp_path / "rnn"))


def test_every_family_has_a_golden_case():
    import seqsense.models

    families = {json.loads((GOLDEN / c / "manifest.json").read_text())["family"] for c in CASES}
    assert families == set(seqsense.models.MODELS)


@pytest.mark.parametrize("case", CASES)
def test_golden_outputs(case):
    pred = runtime.load(GOLDEN / case)
    expected = np.load(GOLDEN / case / "expected.npz")
    for e, ticks in enumerate(_ticks(case)):
        pred.reset()
        outs = [pred.step_tick(t) for t in ticks]
        heads = ("probs",) if pred.discrete else ("mean", "var")
        for h in heads:
            got = np.stack([getattr(o, h) for o in outs])
            np.testing.assert_allclose(got, expected[f"{e}:{h}"], rtol=1e-4, atol=1e-6, err_msg=f"{case} episode {e} {h}")


def test_import_and_step_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import numpy as np\n"
        "from seqsense import runtime\n"
        f"p = runtime.load({str(GOLDEN / 'rnn')!r})\n"
        "out = p.step(0, {'imu': np.zeros(2, np.float32)})\n"
        "assert np.isfinite(out.mean).all() and (out.var > 0).all()\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m] is not None)\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_one_thread_by_default():
    pred = runtime.load(GOLDEN / "framewise")
    assert pred.session.get_session_options().intra_op_num_threads == 1


def test_bad_observations_name_the_stream():
    pred = runtime.load(GOLDEN / "rnn_frames_label")
    img, vec = np.zeros((16, 16, 1), np.uint8), np.zeros(2, np.float32)
    with pytest.raises(ObservationError, match=r"Missing stream 'imu'.*None"):
        pred.step(0, {"camera": img})
    with pytest.raises(ObservationError, match=r"'imu'.*shape \(3,\).*expected shape \(2,\)"):
        pred.step(0, {"camera": img, "imu": np.zeros(3)})
    with pytest.raises(ObservationError, match=r"'camera'.*uint8.*float32"):
        pred.step(0, {"camera": img.astype(np.float32), "imu": vec})
    with pytest.raises(ObservationError, match=r"'camera'.*got shape \(32, 32, 1\)"):
        pred.step(0, {"camera": np.zeros((32, 32, 1), np.uint8), "imu": vec})
    with pytest.raises(ObservationError, match=r"'imu'.*dtype <U1"):
        pred.step(0, {"camera": img, "imu": np.array(["a", "b"])})
    pred.step(10, {"camera": img, "imu": vec})
    with pytest.raises(ObservationError, match="backwards"):
        pred.step(5, {"camera": img, "imu": vec})


def test_missing_sample_is_held_and_ages():
    pred = runtime.load(GOLDEN / "rnn")
    x = np.array([0.3, -0.2], np.float32)
    pred.step(0, {"imu": x})
    pred.step(50_000_000, {"imu": None})
    assert pred.tick["imu_valid"][0] and pred.tick["imu_age_s"][0] == pytest.approx(0.05)
    np.testing.assert_array_equal(pred.tick["imu"][0], x)
    pred.step(80_000_000, {"imu": None, "target": 1.0})  # unknown keys are ignored
    assert pred.tick["imu_age_s"][0] == pytest.approx(0.08)
    pred.step(90_000_000, {"imu": x, "imu_valid": False})
    assert not pred.tick["imu_valid"][0] and pred.tick["imu_age_s"][0] == 0 and not pred.tick["imu"].any()
    pred.reset()
    pred.step(0, {"imu": None})  # nothing seen yet: invalid, zeros
    assert not pred.tick["imu_valid"][0] and not pred.tick["imu"].any()


def test_nan_sample_is_rejected_like_a_missing_one():
    a, b = runtime.load(GOLDEN / "rnn"), runtime.load(GOLDEN / "rnn")
    x = np.array([0.3, -0.2], np.float32)
    for t, obs in enumerate([x, np.array([np.nan, 1.0]), x * 2, np.array([np.inf, 0.0])]):
        pa = a.step(t * 10**7, {"imu": obs})
        pb = b.step(t * 10**7, {"imu": None if not np.isfinite(obs).all() else obs})
        np.testing.assert_array_equal(pa.mean, pb.mean)
        assert np.isfinite(pa.mean).all()
    assert a.rejected["imu"] == 2


def test_max_age_invalidates_held_sample(tmp_path, rnn_dir):
    man = json.loads((rnn_dir / "manifest.json").read_text())
    man["streams"]["imu"]["max_age_s"] = 0.1
    (rnn_dir / "manifest.json").write_text(json.dumps(man))
    pred = runtime.load(rnn_dir)
    pred.step(0, {"imu": np.ones(2)})
    pred.step(100_000_000, {"imu": None})
    assert pred.tick["imu_valid"][0]
    pred.step(150_000_000, {"imu": None})
    assert not pred.tick["imu_valid"][0] and pred.tick["imu_age_s"][0] == 0


def _edit_manifest(folder: Path, edit) -> None:
    man = json.loads((folder / "manifest.json").read_text())
    edit(man)
    (folder / "manifest.json").write_text(json.dumps(man))


def _input(man: dict, name: str) -> dict:
    return next(r for r in man["graph"]["inputs"] if r["name"] == name)


@pytest.mark.parametrize("edit,match", [
    (lambda m: _input(m, "imu").update(shape=[1, 3]), r"input 'imu' is tensor\(float\) \[1, 2\] but manifest.json says float32 \[1, 3\]"),
    (lambda m: m["graph"]["inputs"].remove(_input(m, "imu")), r"missing in graph: \[\], not in manifest: \['imu'\]"),
    (lambda m: m["graph"]["state"][0].update(dtype="float64"), r"'state/h' is tensor\(float\).*float64"),
    (lambda m: m.update(format_version=2), r"format version 2, newer than this runtime reads \(version 1\); upgrade"),
    (lambda m: m.update(format="other"), "not a seqsense export manifest"),
    (lambda m: m.pop("streams"), "lacks the 'streams' entry"),
])
def test_manifest_not_matching_graph(rnn_dir, edit, match):
    _edit_manifest(rnn_dir, edit)
    with pytest.raises(CheckpointError, match=match):
        runtime.load(rnn_dir)


def test_graph_from_newer_export_version(rnn_dir):
    import onnx

    proto = onnx.load(str(rnn_dir / "model.onnx"))
    onnx.helper.set_model_props(proto, {"seqsense_export_format_version": "2"})
    onnx.save(proto, str(rnn_dir / "model.onnx"))
    _edit_manifest(rnn_dir, lambda m: m["graph"].pop("sha256"))
    with pytest.raises(CheckpointError, match="export format version 2 but manifest.json says 1"):
        runtime.load(rnn_dir)


def test_truncated_graph(rnn_dir):
    blob = (rnn_dir / "model.onnx").read_bytes()
    (rnn_dir / "model.onnx").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="does not match the checksum.*truncated"):
        runtime.load(rnn_dir)
    _edit_manifest(rnn_dir, lambda m: m["graph"].pop("sha256"))  # no checksum: onnxruntime's error, with context
    with pytest.raises(CheckpointError, match=r"onnxruntime cannot load graph '.*model.onnx'"):
        runtime.load(rnn_dir)


def test_missing_or_broken_folder(tmp_path, rnn_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        runtime.load(tmp_path / "nope")
    (rnn_dir / "manifest.json").write_text('{"format": "seqsense-ex')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        runtime.load(rnn_dir)
    (rnn_dir / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="has no manifest.json"):
        runtime.load(rnn_dir)


@pytest.mark.parametrize("case", ["rnn", "transformer", "kalman"])
def test_io_bound_step_equals_a_plain_session_run_loop(case):
    """The IO-bound step with its alternating state buffers gives what session.run with a dict feed gives, state carried by hand."""
    pred = runtime.load(GOLDEN / case)
    ref_builder = runtime.TickBuilder.from_manifest(pred.manifest)
    names = [r["name"] for r in pred.manifest["graph"]["inputs"]]
    state = pred.initial_state()
    rng = np.random.default_rng(0)
    shape = tuple(pred.manifest["streams"]["imu"]["shape"])
    packed = pred.manifest["streams"]["imu"]["mode"] == "packed"
    outs = []
    for i in range(30):
        t = i * 20_000_000
        x = None if i % 4 == 3 else rng.standard_normal(((2,) if packed else ()) + shape)
        obs = {"imu": x, "imu_t_ns": (np.array([t - 5_000_000, t]) if packed else t - 3_000_000) if x is not None else None}
        got = pred.step(t, obs)
        tick = ref_builder.build(t, obs)
        res = pred.session.run(pred.output_names, {**{n: tick[n] for n in names}, **state})
        heads = len(pred.heads)
        state = {s["input"]: v for s, v in zip(pred.state_specs, res[heads:])}
        np.testing.assert_array_equal(got.mean, res[0][0], err_msg=f"{case} tick {i}")
        np.testing.assert_array_equal(got.var, res[1][0], err_msg=f"{case} tick {i}")
        outs.append(got)
    assert not np.array_equal(outs[0].mean, outs[-1].mean)  # predictions are copies, not views of a reused buffer


def test_step_reuses_its_buffers():
    pred = runtime.load(GOLDEN / "rnn")
    tick_arrays = {k: id(v) for k, v in pred.tick.items()}
    buffers = {id(b["state/h"]) for b in pred._buffers}
    seen = set()
    for i in range(4):
        pred.step(i * 10**7, {"imu": np.ones(2, np.float32)})
        seen.add(id(pred.state["state/h"]))
    assert {k: id(v) for k, v in pred.tick.items()} == tick_arrays
    assert seen == buffers  # the state alternates between the two preallocated buffers
    pred.reset()
    np.testing.assert_array_equal(pred.state["state/h"], 0)


def test_step_and_step_tick_agree():
    """The robot-facing step on raw samples and the adapter on the tick it built give the same prediction."""
    a, b = runtime.load(GOLDEN / "rnn"), runtime.load(GOLDEN / "rnn")
    rng = np.random.default_rng(1)
    for i in range(10):
        t = i * 50_000_000
        obs = {"imu": None if i % 3 == 2 else rng.standard_normal(2), "imu_t_ns": t - 10_000_000}
        pa = a.step(t, obs)
        tick = {k: v[0] for k, v in a.tick.items()}
        pb = b.step_tick(tick)
        np.testing.assert_array_equal(pa.mean, pb.mean)
        np.testing.assert_array_equal(pa.var, pb.var)


def test_sample_stamps_give_the_age():
    pred = runtime.load(GOLDEN / "rnn")
    pred.step(100_000_000, {"imu": np.ones(2), "imu_t_ns": 70_000_000})
    assert pred.tick["imu_age_s"][0] == np.float32(0.03)
    pred.step(150_000_000, {"imu": None})
    assert pred.tick["imu_age_s"][0] == np.float32(0.08)
    with pytest.raises(ObservationError, match=r"Stream 'imu': sample time 60000000 ns goes backwards"):
        pred.step(200_000_000, {"imu": np.ones(2), "imu_t_ns": 60_000_000})
