"""Real recordings: the Husky ROS 1 bag and a BROAD IMU trial (skipped when ../shared/data/real is absent)."""

from pathlib import Path

import numpy as np
import pytest

from seqsense.cli import main
from seqsense.log import open_log
from seqsense.log.validate import validate

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".." / "shared" / "data" / "real"
HUSKY = REAL / "husky_imu_odom_gps_ros1.bag"
BROAD = REAL / "02_undisturbed_slow_rotation_B.hdf5"
MAPPINGS = ROOT / "datasets" / "mappings"


def _need(path):
    if not path.exists():
        pytest.skip(f"real data {path.name} not found under ../shared/data/real (shared data folder absent)")


def test_husky_bag_with_odom_vel_mapping(tmp_path):
    _need(HUSKY)
    out = tmp_path / "husky.h5"
    assert main(["import", str(HUSKY), "--config", str(MAPPINGS / "husky.json"), "--out", str(out), "--no-progress"]) == 0
    assert [p for p in validate(out) if p.severity == "error"] == []
    log = open_log(out)
    ep = log.episode("ep_000")
    assert set(ep.stream_names) == {"imu", "imu/orientation", "imu/gravity_body", "odom/pose", "odom/twist", "odom_vel", "gps"}  # the mapping derives the gravity direction
    imu, vel, gps = ep.stream("imu"), ep.stream("odom_vel"), ep.stream("gps")
    assert len(imu) == 11865 and len(vel) == 3952 and len(gps) == 989
    assert imu.rate_hz == pytest.approx(30, rel=0.05) and vel.rate_hz == pytest.approx(10, rel=0.05)
    assert gps.rate_hz == pytest.approx(2.5, rel=0.05)
    assert vel.fields == ["vx", "yaw_rate"] and vel.frame_id == "odom"
    np.testing.assert_array_equal(vel.read(), ep.stream("odom/twist").read()[:, [0, 5]])
    acc = imu.read()[:, :3]
    assert 9.0 < np.linalg.norm(acc.mean(axis=0)) < 10.6  # gravity
    assert log.provenance["time"] == "header" and log.provenance["mapping"]["file"].endswith("husky.json")


def test_husky_bag_cli_field_map(tmp_path, capsys):
    _need(HUSKY)
    out = tmp_path / "h.h5"
    assert main(["import", str(HUSKY), "--out", str(out), "--no-progress", "--time", "receive",
                 "--map", "/husky_velocity_controller/odom:twist.twist.linear.x,twist.twist.angular.z=odom_vel"]) == 0
    ep = open_log(out).episode("ep_000")
    assert set(ep.stream_names) == {"imu", "imu/orientation", "odom_vel", "fix"}
    assert ep.stream("odom_vel").sample_shape == (2,)


def test_broad_trial_imports_with_orientation_truth(tmp_path):
    _need(BROAD)
    out = tmp_path / "broad.h5"
    assert main(["import", str(BROAD), "--config", str(MAPPINGS / "broad.json"), "--out", str(out), "--no-progress"]) == 0
    assert [p for p in validate(out) if p.severity == "error"] == []
    ep = open_log(out).episode("ep_000")
    truth = ep.stream("truth/orientation")
    q = truth.read()
    assert truth.fields == ["qw", "qx", "qy", "qz"] and truth.allow_nan and len(truth) == 53240
    ok = ~np.isnan(q).any(axis=1)
    assert 0 < (~ok).sum() < len(q) // 10
    np.testing.assert_allclose(np.linalg.norm(q[ok], axis=1), 1, atol=1e-3)
    assert ep.stream("imu").rate_hz == pytest.approx(285.714, rel=1e-3)


def test_husky_gravity_body_from_the_mapping_derive_list(tmp_path, capsys):
    _need(HUSKY)
    log, out = tmp_path / "husky.h5", tmp_path / "husky_g.h5"
    assert main(["import", str(HUSKY), "--config", str(MAPPINGS / "husky.json"), "--out", str(log), "--no-progress"]) == 0
    assert main(["derive", str(log), "--mapping", str(MAPPINGS / "husky.json"), "--out", str(out)]) == 0
    assert [p for p in validate(out) if p.severity == "error"] == []
    ep = open_log(out).episode("ep_000")
    g, imu = ep.stream("imu/gravity_body").read(), ep.stream("imu").read()
    assert len(g) == 11865 and ep.stream("imu/gravity_body").frame_id == "imu_link"
    still = np.linalg.norm(imu[:, 3:], axis=1) < 0.02  # gyro nearly still
    a = imu[still, :3] / np.linalg.norm(imu[still, :3], axis=1, keepdims=True)
    angle = np.degrees(np.arccos(np.clip(np.sum(a * -g[still], axis=1), -1, 1)))
    assert still.sum() > 1000 and np.median(angle) < 5.0  # measured: median 2.8° (the IMU's own attitude estimate)
