"""Derived targets (seqsense.derive): hand-computed values, mapping derive on import, `seqsense derive`,
`--episode every=S` for generic HDF5 files, and the BROAD at-rest sign check."""

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from seqsense.cli import main
from seqsense.derive import DERIVATIONS, gravity_body, parse_derive_arg, rate, roll_pitch_yaw
from seqsense.errors import ConfigError
from seqsense.importers import ImportOptions, build_mapping, import_sources
from seqsense.log import LogWriter, open_log, seconds_to_ns
from seqsense.log.validate import validate

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".." / "shared" / "data" / "real"
BROAD_TRIALS = [REAL / "02_undisturbed_slow_rotation_B.hdf5", REAL / "16_undisturbed_fast_translation_B.hdf5"]
BROAD_MAP = ROOT / "datasets" / "mappings" / "broad.json"
OPTS = ImportOptions(progress=False)


def _compute(name, t_s, x, **options):
    spec = parse_derive_arg(f"out={name}(src{''.join(f', {k}={v}' for k, v in options.items())})")
    return DERIVATIONS[name].compute(seconds_to_ns(t_s), np.asarray(x, np.float64), spec.options)


def _quat_axis_angle(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.r_[np.cos(angle / 2), np.sin(angle / 2) * axis]  # (w, x, y, z)


def _rotation(q):
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


# ---- each derivation against hand-computed values ----------------------------------------------

def test_gravity_body_identity_roll_and_random_against_rotation_matrix():
    q = np.array([[1.0, 0, 0, 0], _quat_axis_angle([1, 0, 0], np.pi / 2), [2.0, 0, 0, 0], [np.nan, 0, 0, 0], [0, 0, 0, 0]])
    g = _compute("gravity_body", np.arange(5) * 0.01, q)
    np.testing.assert_allclose(g[0], [0, 0, -1], atol=1e-12)  # level: gravity along -z of the body
    # Rolled +90° about x, the body y axis points up: gravity pulls along body -y.
    np.testing.assert_allclose(g[1], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(g[2], [0, 0, -1], atol=1e-12)  # not unit: normalized first
    assert np.isnan(g[3:]).all()  # NaN and zero quaternions give NaN
    rng = np.random.default_rng(0)
    qs = rng.normal(size=(20, 4))
    expect = np.stack([_rotation(qq).T @ [0, 0, -1] for qq in qs])
    np.testing.assert_allclose(gravity_body(qs / np.linalg.norm(qs, axis=1, keepdims=True)), expect, atol=1e-12)


def test_w_last_order_gives_the_same_as_w_first():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(10, 4))
    t = np.arange(10) * 0.1
    for name in ("gravity_body", "roll_pitch", "yaw_rate"):
        np.testing.assert_allclose(_compute(name, t, q[:, [1, 2, 3, 0]], order="xyzw"), _compute(name, t, q), atol=1e-12)
    assert not np.allclose(_compute("gravity_body", t, q[:, [1, 2, 3, 0]]), _compute("gravity_body", t, q))


def test_roll_pitch_zyx():
    roll, pitch, yaw = 0.3, -0.4, 2.5
    # q = qz(yaw) * qy(pitch) * qx(roll), so R = Rz Ry Rx.
    def mul(a, b):
        w1, x1, y1, z1 = a
        w2, x2, y2, z2 = b
        return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                         w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])
    q = mul(mul(_quat_axis_angle([0, 0, 1], yaw), _quat_axis_angle([0, 1, 0], pitch)), _quat_axis_angle([1, 0, 0], roll))
    np.testing.assert_allclose(roll_pitch_yaw(q[None])[0], [roll, pitch, yaw], atol=1e-12)
    np.testing.assert_allclose(_compute("roll_pitch", [0.0], q[None])[0], [roll, pitch], atol=1e-12)
    np.testing.assert_allclose(_compute("roll_pitch", [0.0], [_quat_axis_angle([1, 0, 0], np.pi / 2)])[0], [np.pi / 2, 0], atol=1e-12)


def test_velocity_non_uniform_time_causal_and_central():
    t = np.array([0.0, 0.1, 0.15, 0.4, 0.45, 1.0])
    p = np.stack([2.0 * t + 1, 3.0 * t**2], axis=1)  # (N, 2): linear and quadratic
    causal = _compute("velocity", t, p)
    assert np.isnan(causal[0]).all()  # no sample before the first
    np.testing.assert_allclose(causal[1:, 0], 2.0, atol=1e-6)
    np.testing.assert_allclose(causal[1:, 1], 3.0 * (t[1:] + t[:-1]), atol=1e-6)  # backward difference of t²
    central = _compute("velocity", t, p, method="central")
    np.testing.assert_allclose(central[:, 0], 2.0, atol=1e-6)
    np.testing.assert_allclose(central[1:-1, 1], 6.0 * t[1:-1], atol=1e-6)  # exact for quadratics
    p[3, 0] = np.nan
    c = _compute("velocity", t, p)
    assert np.isnan(c[3:5, 0]).all() and np.isfinite(c[[1, 2, 5], 0]).all()  # NaN reaches its neighbours only
    c = _compute("velocity", t, p, method="central")
    assert np.isnan(c[2:5, 0]).all() and np.isfinite(c[[0, 1, 5], 0]).all()
    tt = np.array([0.0, 0.1, 0.1, 0.2])  # a repeated timestamp: no rate over a zero interval
    assert np.isnan(_compute("velocity", tt, np.arange(4.0)[:, None])[2, 0])


def test_yaw_rate_wraps_around_pi():
    t = np.array([0.0, 0.1, 0.3, 0.4])
    yaw = np.array([3.0, 3.1, -3.1, -3.0])  # through +-pi: +0.1, +2pi-6.2, +0.1 rad
    q = np.stack([_quat_axis_angle([0, 0, 1], a) for a in yaw])
    yr = _compute("yaw_rate", t, q)[:, 0]
    assert np.isnan(yr[0])
    np.testing.assert_allclose(yr[1:], [1.0, (2 * np.pi - 6.2) / 0.2, 1.0], atol=1e-9)
    np.testing.assert_allclose(rate(seconds_to_ns(t), yaw[:, None], "causal", wrap=True)[1:, 0], yr[1:], atol=1e-9)


def test_bad_specs_are_clear():
    with pytest.raises(ConfigError, match="unknown derivation 'speed'.*gravity_body"):
        parse_derive_arg("v=speed(truth/position)")
    with pytest.raises(ConfigError, match="expected NAME=FUNC"):
        parse_derive_arg("truth/gravity_body")
    with pytest.raises(ConfigError, match="order='zxyw' is not one of"):
        parse_derive_arg("g=gravity_body(truth/orientation, order=zxyw)")
    with pytest.raises(ConfigError, match="takes no option.*'method'"):
        parse_derive_arg("g=gravity_body(truth/orientation, method=central)")
    spec = parse_derive_arg("odom/yaw_rate=yaw_rate(odom/pose[3:7]),order=w-last")
    assert (spec.source, spec.select, spec.options) == ("odom/pose", [3, 4, 5, 6], {"order": "xyzw", "method": "causal"})


# ---- logs: mapping derive on import, the CLI, --episode every=S ---------------------------------

def _trial(path, n=300, rate_hz=100.0):
    """A BROAD-like HDF5 trial: a slow roll, its accelerometer reading, NaN truth in places."""
    t = np.arange(n) / rate_hz
    q = np.stack([_quat_axis_angle([1, 0, 0], 0.5 * np.sin(ti)) for ti in t])
    q[50:55] = np.nan
    acc = np.stack([-9.81 * (_rotation(qq).T @ [0, 0, -1]) if np.isfinite(qq).all() else [0, 0, 9.81] for qq in q])
    with h5py.File(path, "w") as f:
        f.attrs["sampling_rate"] = rate_hz
        f["imu_acc"], f["opt_quat"], f["opt_pos"] = acc, q, np.stack([t, t**2, 0 * t], 1)
    return path


def _mapping(tmp_path, derive):
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"format": "hdf5", "streams": [
        {"stream": "imu", "arrays": ["imu_acc"], "field_names": ["ax", "ay", "az"], "units": "m/s^2"},
        {"stream": "truth/orientation", "arrays": ["opt_quat"], "field_names": ["qw", "qx", "qy", "qz"], "allow_nan": True},
        {"stream": "truth/position", "arrays": ["opt_pos"], "field_names": ["x", "y", "z"], "units": "m"}],
        "derive": derive}))
    return build_mapping(str(cfg), [])


def test_mapping_derive_on_import_with_episode_every(tmp_path):
    src = _trial(tmp_path / "trial.hdf5")
    mapping = _mapping(tmp_path, [
        {"stream": "truth/gravity_body", "function": "gravity_body", "source": "truth/orientation", "frame_id": "imu"},
        "truth/velocity=velocity(truth/position[x,y], method=central)"])
    out = import_sources([src], tmp_path / "t.h5", mapping, ImportOptions(episode="every=1", progress=False))
    assert [str(p) for p in validate(out) if p.severity == "error"] == []
    log = open_log(out)
    assert log.episode_names == ["ep_000", "ep_001", "ep_002"]  # 3 s in pieces of 1 s
    assert [len(log.episode(e).stream("imu")) for e in log.episode_names] == [100, 100, 100]
    assert log.episode("ep_001").provenance["segment"] == 1
    assert log.provenance["mapping"]["derive"][1]["options"] == {"method": "central"}
    g = log.episode("ep_000").stream("truth/gravity_body")
    assert g.fields == ["gx", "gy", "gz"] and g.allow_nan and g.frame_id == "imu" and len(g) == 100
    made = json.loads(g.group.attrs["derivation"])
    assert made["function"] == "gravity_body" and made["source"] == "truth/orientation" and "R(q)^T (0, 0, -1)" in made["convention"]
    acc = log.episode("ep_000").stream("imu").read()
    ok = ~np.isnan(g.read()).any(axis=1)
    assert (~ok).sum() == 5  # NaN quaternions stay NaN
    np.testing.assert_allclose(acc[ok], -9.81 * g.read()[ok], atol=1e-4)
    v = log.episode("ep_001").stream("truth/velocity")
    assert v.fields == ["vx", "vy"] and v.units == "m/s" and json.loads(v.group.attrs["derivation"])["causal"] is False
    t_s = v.t / 1e9
    np.testing.assert_allclose(v.read()[:, 0], 1.0, atol=1e-4)
    np.testing.assert_allclose(v.read()[1:-1, 1], 2 * t_s[1:-1], atol=1e-3)  # per episode: one-sided at its ends


def test_derive_block_edges_match_the_whole_stream(tmp_path, monkeypatch):
    import seqsense.derive as derive

    src = _trial(tmp_path / "trial.hdf5")
    mapping = _mapping(tmp_path, ["truth/v=velocity(truth/position, method=central)",
                                  "truth/yaw_rate=yaw_rate(truth/orientation)"])
    whole = open_log(import_sources([src], tmp_path / "a.h5", mapping, OPTS)).episode("ep_000")
    monkeypatch.setattr(derive, "BLOCK_ROWS", 7)
    blocks = open_log(import_sources([src], tmp_path / "b.h5", mapping, OPTS)).episode("ep_000")
    for name in ("truth/v", "truth/yaw_rate"):
        np.testing.assert_array_equal(blocks.stream(name).read(), whole.stream(name).read())


def _log(path):
    with LogWriter(path, provenance={"scenario": "test"}) as log:
        for e in range(2):
            ep = log.episode(f"ep_{e:03d}")
            t = np.sort(np.random.default_rng(e).uniform(0, 2, 40))
            yaw = 3 * t
            q = np.stack([np.cos(yaw / 2), 0 * t, 0 * t, np.sin(yaw / 2)], 1)
            ep.write_stream("truth/orientation", "vector", seconds_to_ns(t), q.astype(np.float32),
                            fields=["qw", "qx", "qy", "qz"], rate_hz=20)
            ep.write_stream("truth/pose", "vector", seconds_to_ns(t), np.c_[t, 2 * t, q[:, [1, 2, 3, 0]]].astype(np.float32),
                            fields=["x", "y", "qx", "qy", "qz", "qw"], units="m", rate_hz=20)
    return path


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_derive_cli_writes_a_valid_new_log_and_leaves_the_input(tmp_path, capsys):
    src = _log(tmp_path / "in.h5")
    before = _digest(src)
    out = tmp_path / "out.h5"
    assert main(["derive", str(src), "--out", str(out), "--add", "truth/gravity_body=gravity_body(truth/orientation)",
                 "--add", "truth/yaw_rate=yaw_rate(truth/pose[2:6], order=xyzw, method=central)"]) == 0
    assert "4 derived stream(s) in 2 episode(s)" in capsys.readouterr().out
    assert _digest(src) == before
    assert main(["inspect", "--validate", str(out)]) == 0
    log = open_log(out)
    ep = log.episode("ep_001")
    np.testing.assert_allclose(ep.stream("truth/yaw_rate").read()[:, 0], 3.0, atol=1e-3)  # through the +-pi wrap
    assert ep.stream("truth/gravity_body").read() == pytest.approx(np.tile([0, 0, -1.0], (40, 1)), abs=1e-6)
    assert log.provenance["scenario"] == "test" and log.provenance["derived"][0]["input"] == str(src)
    assert "derived: truth/gravity_body=gravity_body(truth/orientation, order=wxyz)" == ep.stream("truth/gravity_body").source
    # again with the same derivation: kept as is; --in-place replaces the file whole
    assert main(["derive", str(out), "--in-place", "--add", "truth/gravity_body=gravity_body(truth/orientation)",
                 "--add", "truth/roll_pitch=roll_pitch(truth/orientation)"]) == 0
    assert "2 already there" in capsys.readouterr().out
    assert open_log(out).episode("ep_000").has_stream("truth/roll_pitch")
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("args, message", [
    (["--add", "g=gravity_body(truth/missing)"], "episode 'ep_000': no stream 'truth/missing' to derive 'g' from"),
    (["--add", "g=gravity_body(truth/pose)"], "stream 'truth/pose': gravity_body needs a quaternion of 4 fields, got 6"),
    (["--add", "g=gravity_body(truth/pose[2:6])"], "w-last quaternion but order=wxyz; add order=xyzw"),
    (["--add", "g=tilt(truth/orientation)"], "unknown derivation 'tilt'"),
    (["--add", "g=gravity_body(truth/orientation,order=up)"], "order='up' is not one of"),
    (["--add", "truth/orientation=gravity_body(truth/orientation)"], "'truth/orientation' already exists"),
    ([], "nothing to derive"),
])
def test_derive_cli_bad_arguments_exit_2(tmp_path, capsys, args, message):
    src = _log(tmp_path / "in.h5")
    before = _digest(src)
    out = tmp_path / "out.h5"
    assert main(["derive", str(src), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and _digest(src) == before and not list(tmp_path.glob(".*partial"))


def test_derive_cli_needs_out_or_in_place(tmp_path, capsys):
    src = _log(tmp_path / "in.h5")
    assert main(["derive", str(src), "--add", "g=gravity_body(truth/orientation)"]) == 2
    assert "--out OUT.h5 is required" in capsys.readouterr().err
    assert main(["derive", str(src), "--out", str(src), "--add", "g=gravity_body(truth/orientation)"]) == 2
    assert "pass --in-place" in capsys.readouterr().err
    assert main(["derive", str(tmp_path / "none.h5"), "--out", str(tmp_path / "o.h5"), "--add", "g=gravity_body(q)"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_import_derive_names_the_source_file_and_episode(tmp_path):
    from seqsense.errors import SeqsenseError

    src = _trial(tmp_path / "trial.hdf5")
    mapping = _mapping(tmp_path, ["g=gravity_body(truth/attitude)"])
    with pytest.raises(SeqsenseError, match=r"trial.hdf5' episode 'ep_000': no stream 'truth/attitude'"):
        import_sources([src], tmp_path / "t.h5", mapping, OPTS)
    assert not (tmp_path / "t.h5").exists()


# ---- real data: the BROAD trials ------------------------------------------------------------------

@pytest.mark.parametrize("trial", BROAD_TRIALS, ids=lambda p: p.stem[:2])
def test_broad_at_rest_accelerometer_points_against_gravity_body(tmp_path, trial):
    if not trial.exists():
        pytest.skip(f"real data {trial.name} not found under ../shared/data/real (shared data folder absent)")
    out = tmp_path / "broad.h5"
    assert main(["import", str(trial), "--config", str(BROAD_MAP), "--out", str(out), "--no-progress"]) == 0
    ep = open_log(out).episode("ep_000")
    g, acc = ep.stream("truth/gravity_body").read(), ep.stream("imu").read()[:, :3]
    rest = (ep.stream("movement").read() == 0) & ~np.isnan(g).any(axis=1)
    assert rest.sum() > 10_000
    a = acc[rest] / np.linalg.norm(acc[rest], axis=1, keepdims=True)
    angle = np.degrees(np.arccos(np.clip(np.sum(a * -g[rest], axis=1), -1, 1)))
    assert np.median(angle) < 1.0 and np.percentile(angle, 99) < 3.0  # measured: median 0.36/0.33°, p99 ~1°
    rp = ep.stream("truth/roll_pitch").read()[rest]
    # roll/pitch and gravity agree: g_body = (sin θ, -sin φ cos θ, -cos φ cos θ) for ZYX angles
    expect = np.stack([np.sin(rp[:, 1]), -np.sin(rp[:, 0]) * np.cos(rp[:, 1]), -np.cos(rp[:, 0]) * np.cos(rp[:, 1])], 1)
    np.testing.assert_allclose(expect, g[rest], atol=1e-5)


def test_broad_trial_in_30_s_pieces(tmp_path):
    trial = BROAD_TRIALS[0]
    if not trial.exists():
        pytest.skip(f"real data {trial.name} not found under ../shared/data/real (shared data folder absent)")
    out = tmp_path / "broad30.h5"
    assert main(["import", str(trial), "--config", str(BROAD_MAP), "--episode", "every=30", "--out", str(out),
                 "--no-progress"]) == 0
    assert [p for p in validate(out) if p.severity == "error"] == []
    log = open_log(out)
    n = [len(log.episode(e).stream("imu")) for e in log.episode_names]
    assert len(n) == 7 and sum(n) == 53240 and all(8571 <= k <= 8572 for k in n[:6])  # 186.3 s at 285.7 Hz
    assert all(log.episode(e).has_stream("truth/gravity_body") for e in log.episode_names)


def test_hdf5_episode_gap_with_a_time_array(tmp_path):
    src = tmp_path / "gappy.hdf5"
    t = np.r_[np.arange(50) * 0.01, 5.0 + np.arange(30) * 0.01]  # a 4.5 s hole after 50 samples
    with h5py.File(src, "w") as f:
        f["time"], f["acc"] = t, np.random.default_rng(0).normal(size=(80, 3))
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"format": "hdf5", "time_array": "time", "streams": [{"stream": "imu", "arrays": ["acc"]}]}))
    log = open_log(import_sources([src], tmp_path / "g.h5", build_mapping(str(cfg), []),
                                  ImportOptions(episode="gap=1", progress=False)))
    assert [len(log.episode(e).stream("imu")) for e in log.episode_names] == [50, 30]
