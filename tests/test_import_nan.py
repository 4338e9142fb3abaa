"""Sensor samples a source marks as missing (NaN/Inf) are dropped and counted; truth streams keep them."""

import json

import h5py
import numpy as np
import pytest

from seqsense.cli import main
from seqsense.errors import SeqsenseError
from seqsense.importers import IMPORTERS, ImportOptions, build_mapping, hdf5_generic, import_sources
from seqsense.importers.samples import ULogTopic, sample_source, write_ulog
from seqsense.importers.synthetic import sample_topics, write_bag
from seqsense.log import open_log
from seqsense.log.validate import validate

BAGS = {"rosbag1": "rosbag1", "rosbag2": "sqlite3", "mcap": "mcap"}
NO_SENSOR_NAN = {"video": "frames are uint8 images"}  # formats whose streams cannot hold a NaN


def _nan_bag(folder, name):
    """The sample bag with a NaN magnetometer reading in message 1 of /imu/mag (as some IMU drivers publish)."""
    conns, msgs, _ = sample_topics(n=4)
    mags = [m for m in msgs if m[0] == "/imu/mag"]
    mags[1][2]["magnetic_field"]["x"] = float("nan")
    folder.mkdir(parents=True, exist_ok=True)
    bag = write_bag(folder / ("run.bag" if name == "rosbag1" else "run"), BAGS[name], conns, msgs)
    return (next(bag.glob("*.mcap")) if name == "mcap" else bag), {}, "mag"


def _nan_cell(path, line, col):
    """Write `nan` into cell `col` of text line `line` (0-based, the header counted) of a table file."""
    lines = path.read_text().splitlines()
    sep = ";" if ";" in lines[line] else "," if "," in lines[line] else " "
    cells = lines[line].split(sep)
    cells[col] = "nan"
    lines[line] = sep.join(cells)
    path.write_text("\n".join(lines) + "\n")


def nan_source(name, folder):
    """(source, settings, stream with one NaN sample) for importer `name`: its sample with one reading made NaN."""
    if name in BAGS:
        return _nan_bag(folder, name)
    src, settings = sample_source(name, folder)
    if name == "ulog":
        return src, settings, "vehicle_gps_position_0"  # the sample's GPS message 1 holds a NaN vel_m_s
    if name == "euroc":
        _nan_cell(src / "mav0" / "imu0" / "data.csv", 3, 2)
        return src, settings, "imu0"
    if name == "tum_rgbd":
        _nan_cell(src / "accelerometer.txt", 6, 1)
        return src, settings, "accel"
    if name == "csv":
        _nan_cell(src, 5, 2)  # below the two header rows: an accel.y cell
        return src, settings, "accel"
    if name == "hdf5":
        with h5py.File(src, "a") as f:
            f["imu_acc"][7, 1] = np.inf
        return src, settings, "imu_acc"
    if name == "images":  # no sensor vector: a frame without box (NaN) is truth, and kept
        _nan_cell(src / "groundtruth_rect.txt", 1, 0)
        return src, settings, None
    return src, settings, None


def _import(src, out, notes, mapping=None, settings=None, **opts):
    return import_sources([src], out, mapping, ImportOptions(progress=False, **opts), notify=notes.append,
                          settings=settings)


@pytest.mark.parametrize("name", sorted(IMPORTERS))
def test_every_importer_drops_nan_sensor_samples_and_validates(name, tmp_path, capsys):
    src, settings, stream = nan_source(name, tmp_path / "src")
    notes = []
    out = _import(src, tmp_path / "log.h5", notes, settings=settings)
    assert [str(p) for p in validate(out) if p.severity == "error"] == []
    assert main(["inspect", "--validate", str(out)]) == 0 and "0 error(s)" in capsys.readouterr().out
    log = open_log(out)
    dropped = log.provenance["dropped_nonfinite"]
    for e in log.episode_names:
        ep = log.episode(e)
        for s in ep.stream_names:
            st = ep.stream(s)
            if st.kind != "image" and not st.allow_nan:
                assert np.isfinite(st.read()).all(), s
    if stream is None:
        assert dropped == {}, NO_SENSOR_NAN.get(name, name)
        if name == "images":
            center = log.episode("ep_000").stream("truth/box_center")
            assert center.allow_nan and len(center) == 12 and np.isnan(center.read()[1]).all()
        return
    assert dropped == {stream: 1}
    assert any(f"dropped 1 sample(s) of stream '{stream}'" in n for n in notes)
    st = log.episode("ep_000").stream(stream)
    assert not st.allow_nan and np.isfinite(st.read()).all()


def test_dropped_samples_keep_times_and_order_checks(tmp_path):
    src, _, _ = _nan_bag(tmp_path, "rosbag1")
    _, _, expected = sample_topics(n=4)
    t, x = expected["mag"]
    for sort_time in (False, True):
        ep = open_log(_import(src, tmp_path / f"l{sort_time}.h5", [], sort_time=sort_time)).episode("ep_000")
        mag = ep.stream("mag")
        np.testing.assert_array_equal(mag.t, t[[0, 2, 3]])
        np.testing.assert_allclose(mag.read(), x[[0, 2, 3]].astype(np.float32), rtol=1e-6)
        assert len(ep.stream("imu")) == 4  # other streams of the same driver keep every sample


def test_a_mapping_marks_a_stream_allow_nan(tmp_path):
    src, _, _ = _nan_bag(tmp_path, "rosbag1")
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"streams": [{"topic": "/imu/mag", "stream": "mag", "allow_nan": True}]}))
    log = open_log(_import(src, tmp_path / "log.h5", [], build_mapping(str(cfg), [])))
    mag = log.episode("ep_000").stream("mag")
    assert mag.allow_nan and len(mag) == 4 and np.isnan(mag.read()[1, 0])
    assert log.provenance["dropped_nonfinite"] == {}
    assert [str(p) for p in validate(log.path) if p.severity == "error"] == []


def test_truth_streams_keep_nan_even_when_it_comes_late(tmp_path, monkeypatch):
    monkeypatch.setattr(hdf5_generic, "BLOCK_ROWS", 8)  # the NaN arrives after the stream was created
    src = tmp_path / "trial.hdf5"
    with h5py.File(src, "w") as f:
        f.attrs["sampling_rate"] = 100.0
        f["acc"] = np.random.default_rng(0).normal(size=(40, 3))
        q = np.tile([1.0, 0, 0, 0], (40, 1))
        q[30:33] = np.nan
        f["quat"] = q
    mapping = build_mapping(None, ["acc=imu", "quat=truth/orientation"])
    log = open_log(_import(src, tmp_path / "log.h5", [], mapping))
    truth = log.episode("ep_000").stream("truth/orientation")
    assert truth.allow_nan and len(truth) == 40 and np.isnan(truth.read()[30:33]).all()
    assert not log.episode("ep_000").stream("imu").allow_nan and log.provenance["dropped_nonfinite"] == {}
    assert [str(p) for p in validate(log.path) if p.severity == "error"] == []


def test_a_stream_of_only_nan_is_left_out_with_a_note(tmp_path):
    src = tmp_path / "a.csv"
    src.write_text("t_s,x,y\n0,nan,1\n0.1,inf,2\n0.2,nan,3\n")
    notes = []
    log = open_log(_import(src, tmp_path / "log.h5", notes, build_mapping(None, ["x=x", "y=y"])))
    assert log.episode("ep_000").stream_names == ["y"] and log.provenance["dropped_nonfinite"] == {"x": 3}
    assert any("3 sample(s) of stream 'x'" in n and "left out" in n for n in notes)


def test_ulog_fields_px4_never_sets_are_left_out(tmp_path):
    t_us = (1_000_000 + np.arange(20) * 10_000).astype(np.uint64)
    x = np.arange(20.0)
    x[4] = np.nan  # a missing reading: that message is dropped
    src = write_ulog(tmp_path / "f.ulg", [ULogTopic("baro", [("float", "pressure"), ("float", "temperature")], t_us,
                                                    {"pressure": x, "temperature": np.full(20, np.nan)})])
    notes = []
    log = open_log(_import(src, tmp_path / "log.h5", notes))
    baro = log.episode("ep_000").stream("baro_0")
    assert baro.fields == ["pressure"] and len(baro) == 19 and not baro.allow_nan
    assert log.provenance["ulog"]["f.ulg"]["unset_fields"] == {"baro_0": ["temperature"]}
    assert log.provenance["dropped_nonfinite"] == {"baro_0": 1}
    assert any("baro_0 ['temperature']" in n for n in notes)
    # picked fields are kept as picked; a mapping marking allow_nan keeps the NaN
    picked = build_mapping(None, ["baro_0:pressure=baro", "baro_0:temperature=temp"])
    log = open_log(_import(src, tmp_path / "p.h5", [], picked))
    assert log.episode("ep_000").stream_names == ["baro"] and log.provenance["dropped_nonfinite"] == {"baro": 1, "temp": 20}
    with pytest.raises(SeqsenseError, match=r"every sample of .*topic 'baro_0' holds NaN or Inf.*allow_nan"):
        _import(src, tmp_path / "e.h5", [], build_mapping(None, ["baro_0:temperature=temp"]))
    assert not (tmp_path / "e.h5").exists()
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"streams": [{"topic": "baro_0", "stream": "baro", "allow_nan": True}]}))
    baro = open_log(_import(src, tmp_path / "a.h5", [], build_mapping(str(cfg), []))).episode("ep_000").stream("baro")
    assert baro.allow_nan and baro.fields == ["pressure", "temperature"] and len(baro) == 20
