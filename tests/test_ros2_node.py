"""The ROS 2 node's message -> tick adapter, offline: rosbags-deserialized messages, no rclpy.

A bag is imported with `seqsense import`'s machinery, a tiny model on its streams is exported (the
manifest learns each stream's topic from the log), and the same bag's messages, fed through
`TickAdapter`, must give the runtime exactly the ticks the dataset gives the model, and the torch
predictor driven by the same observations must agree with it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from seqsense import runtime
from seqsense.dataset import WindowDataset, compute_normalization, episode_refs
from seqsense.export import export_model
from seqsense.importers import ImportOptions, import_sources
from seqsense.importers.synthetic import sample_topics, typestore_for, write_bag
from seqsense.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
INPUTS, TARGET = ("imu", "odom/twist"), "pose"


def _node_module():
    spec = importlib.util.spec_from_file_location("ros2_node", ROOT / "scripts" / "ros2_node.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bag_export(tmp_path_factory):
    """(bag path, its imported log, an export of a tiny rnn on imu + odom/twist -> pose with clock imu)."""
    tmp = tmp_path_factory.mktemp("ros2")
    conns, msgs, _ = sample_topics(n=12, seed=3)
    keep = {"/imu/data", "/odom", "/pose"}
    bag = write_bag(tmp / "run", "sqlite3", {k: v for k, v in conns.items() if k in keep}, [m for m in msgs if m[0] in keep])
    log = import_sources([bag], tmp / "log.h5", options=ImportOptions(progress=False))
    model_cls, config_cls = MODELS["rnn"]
    config = config_cls(inputs=INPUTS, target=TARGET, clock="imu", hidden=8, window=4)
    ds = WindowDataset(episode_refs([log]), config.window_spec(window=1))
    torch.manual_seed(0)
    model = model_cls(config, ds.stream_info(), compute_normalization(ds)).eval()
    export_model(model, tmp / "exp", {"extra": {"data": [str(log)]}}, parity_ticks=12, log=lambda m: None)
    return bag, ds, tmp / "exp", model


def _replay(bag: Path):
    """(topic, msgtype, message, receive time) of every message in a ROS 2 bag, deserialized by rosbags."""
    from rosbags.rosbag2 import Reader

    ts = typestore_for("sqlite3")
    with Reader(bag) as reader:
        for conn, t, raw in reader.messages():
            yield conn.topic, conn.msgtype, ts.deserialize_cdr(raw, conn.msgtype), t


def test_manifest_names_the_topics(bag_export):
    _, _, exp, _ = bag_export
    streams = runtime.read_manifest(exp)["streams"]
    assert streams["imu"]["topic"] == "/imu/data" and streams["odom/twist"]["topic"] == "/odom"


def test_adapter_gives_the_dataset_ticks(bag_export):
    bag, ds, exp, model = bag_export
    node = _node_module()
    pred = runtime.load(exp)
    adapter = node.TickAdapter(pred.manifest)
    assert adapter.topics() == {"/imu/data": ["imu"], "/odom": ["odom/twist"]}
    torch_pred, torch_raw = model.predictor(), model.predictor()
    want = list(ds.iter_ticks(0))
    got = []
    for topic, msgtype, msg, t_recv in _replay(bag):
        if topic not in adapter.topics():
            continue
        fed = adapter.on_message(topic, msgtype, msg, t_recv)
        if "imu" in fed:  # the clock stream: step at its stamp
            t = adapter.pending["imu"][-1][0]
            obs = adapter.observations(t)
            p = pred.step(t, obs)
            got.append((t, {k: v[0].copy() for k, v in pred.tick.items()}, p, torch_raw.step(t, obs)))
    assert len(got) == len(want) == 12
    for (t, tick, p, raw), w in zip(got, want):
        assert t == w["t_ns"]
        for k in ("dt_s", "imu", "imu_age_s", "imu_valid", "odom/twist", "odom/twist_age_s", "odom/twist_valid"):
            np.testing.assert_array_equal(tick[k], w[k], err_msg=k)
        ref = torch_pred.step_tick(w)
        for q in (p, raw):  # the runtime and the torch predictor on the same raw observations
            np.testing.assert_allclose(q.mean, ref.mean, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(q.var, ref.var, rtol=1e-4, atol=1e-6)


def test_image_topic_is_resized_to_the_model_input():
    node = _node_module()
    from seqsense.importers.synthetic import build_message

    ts = typestore_for("sqlite3")
    manifest = {"streams": {"camera": {"kind": "image", "shape": [4, 4, 3], "mode": "latest", "topic": "/cam/image_raw"}}}
    adapter = node.TickAdapter(manifest)
    img = np.full((6, 8, 3), 200, np.uint8)
    msg = build_message(ts, "sensor_msgs/msg/Image", {"header": {"stamp": {"sec": 1, "nanosec": 0}}, "height": 6, "width": 8,
                                                       "encoding": "rgb8", "step": 24, "data": img.ravel()})
    adapter.on_message("/cam/image_raw", "sensor_msgs/msg/Image", msg, 0)
    obs = adapter.observations(1_100_000_000)
    assert obs["camera"].shape == (4, 4, 3) and obs["camera"].dtype == np.uint8
    assert obs["camera_t_ns"] == 1_000_000_000  # the header stamp: the predictor ages it to the tick
    assert adapter.observations(1_200_000_000)["camera"] is None  # nothing new: the runtime holds it


def test_topics_must_be_known_and_publish_helpers():
    node = _node_module()
    with pytest.raises(ValueError, match="No topic known for stream.*--topic imu=/TOPIC"):
        node.TickAdapter({"streams": {"imu": {"kind": "vector", "shape": [6], "topic": ""}}})
    assert node.parse_topics(["imu=/imu/data:sensor_msgs/msg/Imu"]) == ({"imu": "/imu/data"}, {"/imu/data": "sensor_msgs/msg/Imu"})
    with pytest.raises(ValueError, match="STREAM=/TOPIC"):
        node.parse_topics(["imu:/x"])
    cov = np.asarray(node.pose_covariance([0.1, 0.2])).reshape(6, 6)
    np.testing.assert_allclose(np.diag(cov), [0.1, 0.2, node.UNKNOWN_VAR, node.UNKNOWN_VAR, node.UNKNOWN_VAR, node.UNKNOWN_VAR])
    assert "rclpy" not in __import__("sys").modules
