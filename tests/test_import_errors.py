"""Bad input exits 2 with a message naming the file, topic and message index, and leaves no output behind."""

import numpy as np
import pytest

from seqsense.cli import main
from seqsense.importers.synthetic import compressed_msg, header, sample_topics, write_bag


def _fails(capsys, tmp_path, argv, *needles):
    before = set(tmp_path.rglob("*"))
    out = tmp_path / "out.h5"
    assert main(["import", *map(str, argv), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Traceback" not in err and not out.exists()
    assert set(tmp_path.rglob("*")) == before  # no partial or scratch files
    return err


@pytest.mark.parametrize("storage", ["rosbag1", "mcap"])
def test_truncated_bag(tmp_path, capsys, storage):
    conns, msgs, _ = sample_topics(n=10)
    bag = write_bag(tmp_path / ("full.bag" if storage == "rosbag1" else "full"), storage, conns, msgs)
    src = bag if storage == "rosbag1" else next(bag.glob("*.mcap"))
    data = src.read_bytes()
    cut = tmp_path / f"cut{src.suffix}"
    cut.write_bytes(data[: len(data) // 2])
    _fails(capsys, tmp_path, [cut], str(cut), "truncated")


def test_corrupt_jpeg_in_bag(tmp_path, capsys):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
    msgs = [("/cam/compressed", 10**9 + i * 10**7, compressed_msg(10**9 + i * 10**7, img, "jpeg")) for i in range(5)]
    msgs[3][2]["data"] = msgs[3][2]["data"][:40]  # header only: the decoder gives up
    bag = write_bag(tmp_path / "cam.bag", "rosbag1", {"/cam/compressed": "sensor_msgs/msg/CompressedImage"}, msgs)
    _fails(capsys, tmp_path, [bag], "cam.bag", "topic '/cam/compressed' message 3", "corrupt")


def test_unknown_topic_in_map(tmp_path, capsys):
    conns, msgs, _ = sample_topics(n=2)
    bag = write_bag(tmp_path / "a.bag", "rosbag1", conns, msgs)
    _fails(capsys, tmp_path, [bag, "--map", "/nope=x"], "'/nope'", "/imu/data")


def test_empty_bag(tmp_path, capsys):
    bag = write_bag(tmp_path / "empty.bag", "rosbag1", {"/imu": "sensor_msgs/msg/Imu"}, [])
    _fails(capsys, tmp_path, [bag], "empty.bag", "empty bag")


def test_csv_non_numeric_cell(tmp_path, capsys):
    csv = tmp_path / "log.csv"
    csv.write_text("t_s,ax,ay\n0.0,1,2\n0.1,1,2\n0.2,1,oops\n")
    _fails(capsys, tmp_path, [csv], "log.csv", "line 4", "data row 2", "column 'ay'", "'oops'")


def test_image_size_change_needs_resize(tmp_path, capsys):
    msgs = []
    for i, w in enumerate((8, 8, 10)):
        msgs.append(("/cam/image_raw", 10**9 + i, {"header": header(10**9 + i, "c"), "height": 4, "width": w,
                                                     "encoding": "mono8", "step": w, "data": np.zeros(4 * w, np.uint8)}))
    bag = write_bag(tmp_path / "sizes.bag", "rosbag1", {"/cam/image_raw": "sensor_msgs/msg/Image"}, msgs)
    _fails(capsys, tmp_path, [bag], "topic '/cam/image_raw' message 2", "--image-size")
    assert main(["import", str(bag), "--out", str(tmp_path / "ok.h5"), "--image-size", "8x4", "--no-progress"]) == 0


def test_bad_usage(tmp_path, capsys):
    csv = tmp_path / "log.csv"
    csv.write_text("time,ax\n0,1\n")
    _fails(capsys, tmp_path, [csv], "unit of time column 'time'", "time_unit")
    _fails(capsys, tmp_path, [csv, "--episode", "gap=x"], "gap=SECONDS")
    _fails(capsys, tmp_path, [csv, "--map", "no_equals_sign"], "TOPIC=STREAM")
