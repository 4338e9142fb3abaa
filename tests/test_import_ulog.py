"""PX4 ULog: tiny logs written by the ULog format description, imported topic by topic; the real sample log."""

import struct
from pathlib import Path

import numpy as np
import pytest

from seqsense.cli import main
from seqsense.errors import SeqsenseError
from seqsense.importers import ImportOptions, build_mapping, detect_format, import_sources, list_sources
from seqsense.importers.samples import ULogTopic, sample_ulog, write_ulog
from seqsense.log import open_log
from seqsense.log.validate import validate

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".." / "shared" / "data" / "real" / "px4_sample_log_small.ulg"
PX4_MAP = ROOT / "datasets" / "mappings" / "px4.json"
OPTS = ImportOptions(progress=False)


def _import(src, tmp_path, mapping=None, notes=None, **opts):
    out = tmp_path / "log.h5"
    out.unlink(missing_ok=True)
    notify = notes.append if notes is not None else (lambda _: None)
    return open_log(import_sources([src], out, mapping, ImportOptions(progress=False, **opts), notify=notify))


def _topic(name, t_us, instance=0, **values):
    fields = [("float", k) if np.ndim(v) == 1 else (f"float[{np.shape(v)[1]}]", k) for k, v in values.items()]
    return ULogTopic(name, fields, np.asarray(t_us, np.uint64), values, instance)


def test_topics_become_streams_with_ns_times_and_instances_apart(tmp_path):
    src = sample_ulog(tmp_path / "f.ulg")
    assert detect_format(src) == "ulog"
    notes = []
    log = _import(src, tmp_path, notes=notes)
    assert [str(p) for p in validate(log.path)] == []
    ep = log.episode("ep_000")
    assert set(ep.stream_names) == {"sensor_combined_0", "sensor_accel_0", "sensor_accel_1", "vehicle_attitude_0",
                                    "vehicle_gps_position_0"}
    sc = ep.stream("sensor_combined_0")
    assert sc.fields[:4] == ["gyro_rad[0]", "gyro_rad[1]", "gyro_rad[2]", "gyro_integral_dt"]
    np.testing.assert_array_equal(sc.t, (20_000_000 + np.arange(200) * 10_000) * 1000)  # µs -> ns
    assert sc.rate_hz == pytest.approx(100)
    a0, a1 = ep.stream("sensor_accel_0"), ep.stream("sensor_accel_1")
    assert a0.fields == ["timestamp_sample", "device_id", "x", "y", "z", "temperature"]
    assert a0.read()[0, 1] == 1000 and a1.read()[0, 1] == 1001 and a1.t[0] - a0.t[0] == 1000
    q = ep.stream("vehicle_attitude_0").read()[:, :4]
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-6)
    gps = ep.stream("vehicle_gps_position_0")
    # PX4's NaN in message 1 (vel_m_s) is a missing reading: that message is dropped and counted
    assert not gps.allow_nan and len(gps) == 9 and np.isfinite(gps.read()).all()
    assert log.provenance["dropped_nonfinite"] == {"vehicle_gps_position_0": 1}
    assert any("1 sample(s) of stream 'vehicle_gps_position_0'" in n for n in notes)
    assert ep.provenance["format"] == "ulog" and ep.provenance["sys_name"] == "seqsense-sample"
    assert log.provenance["ulog"]["f.ulg"]["dropouts"] == 0


def test_mapping_picks_fields_and_renames(tmp_path):
    src = sample_ulog(tmp_path / "f.ulg")
    mapping = build_mapping(str(PX4_MAP), ["sensor_accel_1=accel_b"])
    log = _import(src, tmp_path, mapping)
    ep = log.episode("ep_000")
    assert set(ep.stream_names) == {"imu", "attitude", "accel_b"}
    imu = ep.stream("imu")
    assert imu.fields == ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"] and imu.frame_id == "body_frd"
    assert imu.read()[:, 2].mean() == pytest.approx(-9.81, abs=0.3)
    assert ep.stream("attitude").fields == ["qw", "qx", "qy", "qz"]
    # unmapped topics are not parsed; the other instance of a mapped topic is, and counted as dropped
    assert log.provenance["dropped"] == {"f.ulg:sensor_accel_0": 100}
    mapping = build_mapping(None, ["sensor_combined_0:gyro_rad[0],gyro_rad[2]=gyro"])
    ep = _import(src, tmp_path, mapping).episode("ep_000")
    assert ep.stream("gyro").fields == ["gyro_rad[0]", "gyro_rad[2]"] and "sensor_accel_0" in ep.stream_names


def test_mapping_errors_name_the_topic_and_the_choices(tmp_path):
    src = sample_ulog(tmp_path / "f.ulg")
    with pytest.raises(SeqsenseError, match=r"'sensor_gyro_0'.*sensor_accel_0, sensor_accel_1"):
        _import(src, tmp_path, build_mapping(None, ["sensor_gyro_0=gyro"]))
    with pytest.raises(SeqsenseError, match=r"topic 'sensor_accel_0': no field\(s\) \['w'\]; fields: \['timestamp_sample'"):
        _import(src, tmp_path, build_mapping(None, ["sensor_accel_0:w=a"]))
    cfg = tmp_path / "m.json"
    cfg.write_text('{"streams": [{"topic": "vehicle_gps_position_0", "stream": "gps", "allow_nan": false}]}')
    with pytest.raises(SeqsenseError, match=r"topic 'vehicle_gps_position_0' message 1 field 'vel_m_s'"):
        _import(src, tmp_path, build_mapping(str(cfg), []))
    assert not (tmp_path / "log.h5").exists()


def test_episode_split_dropouts_and_backwards_times(tmp_path):
    src = sample_ulog(tmp_path / "f.ulg", seconds=2.0)
    log = _import(src, tmp_path, episode="every=0.5")
    assert len(log.episode_names) == 4
    assert sum(len(log.episode(e).stream("sensor_combined_0")) for e in log.episode_names) == 200
    t = 1_000_000 + np.arange(20) * 10_000
    t[[2, 3]] = t[[3, 2]]
    src = write_ulog(tmp_path / "b.ulg", [_topic("baro", t, pressure=np.arange(20.0))], dropouts=[(1_050_000, 30)])
    notes = []
    with pytest.raises(SeqsenseError, match=r"topic 'baro_0'.*message 3 .*--sort-time"):
        _import(src, tmp_path, notes=notes)
    log = _import(src, tmp_path, notes=notes, sort_time=True)
    np.testing.assert_array_equal(log.episode("ep_000").stream("baro_0").read()[:, 0], [0, 1, 3, 2] + list(range(4, 20)))
    assert log.provenance["ulog"]["b.ulg"]["dropout_ms"] == 30 and any("dropped data 1 time" in n for n in notes)


def test_damaged_files_are_located_errors(tmp_path, capsys):
    src = sample_ulog(tmp_path / "f.ulg")
    data = src.read_bytes()
    bad = tmp_path / "bad.ulg"
    bad.write_bytes(b"ULog\x01\x12\x35\x01" + b"\x00" * 4)  # header cut short
    assert main(["import", str(bad), "--out", str(tmp_path / "o.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.ulg" in err and "ULog" in err and "Traceback" not in err and not (tmp_path / "o.h5").exists()
    # a log cut in the middle of its data imports what was written before the cut, as pyulog reads it
    cut = tmp_path / "cut.ulg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    ep = _import(cut, tmp_path).episode("ep_000")
    assert 0 < len(ep.stream("sensor_combined_0")) < 200
    # a data message with an unknown id is skipped and reported as corruption
    junk = data + struct.pack("<HBH", 6, ord("D"), 99) + b"\x00" * 4
    (tmp_path / "junk.ulg").write_bytes(junk)
    notes = []
    log = _import(tmp_path / "junk.ulg", tmp_path, notes=notes)
    assert log.provenance["ulog"]["junk.ulg"]["file_corruption"] and any("corrupt" in n for n in notes)


def test_cli_list_import_validate_train(tmp_path, capsys):
    src = sample_ulog(tmp_path / "flight.ulg", seconds=3.0)
    assert main(["import", str(src), "--list"]) == 0
    out = capsys.readouterr().out
    assert "(ulog)" in out and "sensor_accel_0" in out and "sensor_accel_1" in out
    line = next(l for l in out.splitlines() if "sensor_combined_0" in l).split()
    assert line[-2:] == ["300", "100"]  # count, rate Hz
    log = tmp_path / "px4.h5"
    assert main(["import", str(src), "--config", str(PX4_MAP), "--episode", "every=0.5", "--out", str(log),
                 "--no-progress"]) == 0
    assert main(["inspect", "--validate", str(log)]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    assert main(["train", "--model", "framewise", "--data", str(log), "--inputs", "imu", "--target", "attitude",
                 "--out", str(tmp_path / "run"), "--set", "steps=3", "--set", "window=8", "--set", "batch_size=4",
                 "--set", "hidden=8", "--no-progress"]) == 0
    assert (tmp_path / "run" / "best.safetensors").exists()
    assert main(["eval", str(tmp_path / "run"), "--data", str(log), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    assert (tmp_path / "eval" / "summary.json").exists()  # list -> import -> inspect -> train -> eval


def _need_real():
    if not REAL.exists():
        pytest.skip(f"real data {REAL.name} not found under ../shared/data/real (shared data folder absent)")


def test_real_px4_log_lists_and_imports(tmp_path):
    _need_real()
    (listing,) = list_sources([REAL])
    items = {it["topic"]: it for it in listing["items"]}
    assert len(items) == 70 and {"sensor_accel_0", "sensor_accel_1", "sensor_accel_2"} <= set(items)
    assert items["sensor_combined_0"]["count"] == 1298 and items["sensor_combined_0"]["rate_hz"] == pytest.approx(200, rel=0.05)
    log = _import(REAL, tmp_path, build_mapping(str(PX4_MAP), []))
    assert [p for p in validate(log.path) if p.severity == "error"] == []
    ep = log.episode("ep_000")
    imu, att = ep.stream("imu"), ep.stream("attitude")
    assert len(imu) == 1298 and len(att) == 1298 and imu.rate_hz == pytest.approx(204.6, rel=0.01)
    assert 9.0 < np.linalg.norm(imu.read()[:, :3].mean(axis=0)) < 10.6  # gravity
    np.testing.assert_allclose(np.linalg.norm(att.read(), axis=1), 1, atol=1e-4)
    assert imu.t[0] == 20_326_716_000
    # every topic of the log, unmapped
    log = _import(REAL, tmp_path)
    assert [p for p in validate(log.path) if p.severity == "error"] == []
    assert len(log.episode("ep_000").stream_names) == 70
