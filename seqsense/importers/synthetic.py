"""Small synthetic bags with every supported message type, written with `rosbags` (for tests and benchmarks).

`build_message` fills any field not given with zeros/empty values, so a message is described by a
nested dict of the fields that matter. `write_bag` streams `(topic, t_receive_ns, fields)` triples
into a ROS 1 bag, a ROS 2 sqlite3 bag or a ROS 2 MCAP bag. `sample_topics` returns one topic per
supported type (images in several encodings) with the values the importer must reproduce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

STORAGES = ("rosbag1", "sqlite3", "mcap")


def typestore_for(storage: str):
    """The rosbags typestore matching a storage kind (ROS 1 Noetic or ROS 2 Humble)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS1_NOETIC if storage == "rosbag1" else Stores.ROS2_HUMBLE)


def _default(ts, node):
    kind, spec = node
    name = getattr(kind, "name", str(kind))
    if name == "BASE":
        return "" if spec[0] == "string" else np.dtype(spec[0] if spec[0] != "bool" else np.bool_).type(0).item()
    if name == "NAME":
        return build_message(ts, spec, {})
    inner, n = spec
    if getattr(inner[0], "name", "") == "BASE" and inner[1][0] != "string":
        return np.zeros(n, dtype=inner[1][0])
    return [_default(ts, inner) for _ in range(n)]


def build_message(ts, msgtype: str, values: dict):
    """A message of `msgtype` from a nested dict of field values; other fields get zero defaults."""
    _, fields = ts.fielddefs[msgtype]
    kwargs = {}
    for fname, node in fields:
        if fname not in values:
            kwargs[fname] = _default(ts, node)
            continue
        v = values[fname]
        kind, spec = node
        if getattr(kind, "name", "") == "NAME" and isinstance(v, dict):
            v = build_message(ts, spec, v)
        elif getattr(kind, "name", "") in ("ARRAY", "SEQUENCE") and spec[0][1][0] != "string" and \
                getattr(spec[0][0], "name", "") == "BASE":
            v = np.asarray(v, dtype=spec[0][1][0])
        kwargs[fname] = v
    return ts.types[msgtype](**kwargs)


def header(t_ns: int, frame_id: str) -> dict:
    """A header dict with stamp `t_ns` and `frame_id`."""
    return {"stamp": {"sec": int(t_ns // 1_000_000_000), "nanosec": int(t_ns % 1_000_000_000)}, "frame_id": frame_id}


def write_bag(path: Path, storage: str, connections: dict[str, str], messages: Iterable[tuple[str, int, dict]]) -> Path:
    """Write `(topic, t_receive_ns, fields)` messages (in time order) to a bag; returns its path."""
    ts = typestore_for(storage)
    path = Path(path)
    if storage == "rosbag1":
        from rosbags.rosbag1 import Writer

        writer = Writer(path)
        serialize = ts.serialize_ros1
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(path, version=9, storage_plugin=plugin)
        serialize = ts.serialize_cdr
    with writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in connections.items()}
        for topic, t_ns, values in messages:
            msgtype = connections[topic]
            msg = values if not isinstance(values, dict) else build_message(ts, msgtype, values)
            writer.write(conns[topic], int(t_ns), serialize(msg, msgtype))
    return path


def _image_msgs(rng, t_ns: int, encoding: str, h: int = 6, w: int = 8, pad: int = 0) -> tuple[dict, np.ndarray]:
    """An Image message dict and the RGB(A) uint8 (H, W, C) array the importer must produce."""
    c = {"mono8": 1, "mono16": 1, "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}[encoding]
    if encoding == "mono16":
        px16 = rng.integers(0, 65536, size=(h, w), dtype=np.uint16)
        rows = px16.astype("<u2").view(np.uint8).reshape(h, w * 2)
        expected = (px16 >> 8).astype(np.uint8)[:, :, None]
    else:
        px = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
        rows = px.reshape(h, w * c)
        expected = px[:, :, ::-1] if encoding == "bgr8" else px[:, :, [2, 1, 0, 3]] if encoding == "bgra8" else px
    step = rows.shape[1] + pad
    data = np.zeros((h, step), np.uint8)
    data[:, : rows.shape[1]] = rows
    msg = {"header": header(t_ns, "cam"), "height": h, "width": w, "encoding": encoding, "is_bigendian": 0,
           "step": step, "data": data.ravel()}
    return msg, np.ascontiguousarray(expected)


def _smooth_image(rng, h: int = 32, w: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, size=3)
    return np.clip(np.stack([base[0] + xx, base[1] + yy, base[2] + xx - yy], -1), 0, 255).astype(np.uint8)


def compressed_msg(t_ns: int, rgb: np.ndarray, fmt: str) -> dict:
    """A CompressedImage message dict holding `rgb` encoded as jpeg or png."""
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {fmt} image")
    return {"header": header(t_ns, "cam"), "format": fmt, "data": buf.ravel()}


def sample_topics(n: int = 5, seed: int = 0, t0_ns: int = 1_700_000_000_000_000_000):
    """One topic per supported type: (connections, time-ordered messages, expected {stream: (t, data)})."""
    rng = np.random.default_rng(seed)
    conns: dict[str, str] = {}
    msgs: list[tuple[str, int, dict]] = []
    expected: dict[str, tuple[list, list]] = {}

    def add(topic, msgtype, stream_values: dict, i, values):
        conns.setdefault(topic, msgtype)
        t = t0_ns + i * 10_000_000 + list(conns).index(topic) * 1000  # 100 Hz, topics interleaved
        msgs.append((topic, t + 500_000, values(t)))  # received 0.5 ms after the stamp
        for stream, v in stream_values(t).items():
            ts_, xs = expected.setdefault(stream, ([], []))
            ts_.append(t)
            xs.append(v)

    for i in range(n):
        r = rng.normal(size=16)
        q = r[:4] / np.linalg.norm(r[:4])
        add("/imu/data", "sensor_msgs/msg/Imu", lambda t: {"imu": r[:6], "imu/orientation": q}, i, lambda t: {
            "header": header(t, "imu_link"), "orientation": dict(zip("xyzw", q)), "orientation_covariance": np.full(9, 0.01),
            "linear_acceleration": dict(zip("xyz", r[:3])), "angular_velocity": dict(zip("xyz", r[3:6]))})
        add("/imu/mag", "sensor_msgs/msg/MagneticField", lambda t: {"mag": r[6:9] * 1e-5}, i, lambda t: {
            "header": header(t, "imu_link"), "magnetic_field": dict(zip("xyz", r[6:9] * 1e-5))})
        add("/joint_states", "sensor_msgs/msg/JointState",
            lambda t: {"joint_states/position": r[:2], "joint_states/velocity": r[2:4], "joint_states/effort": r[4:6]}, i,
            lambda t: {"header": header(t, ""), "name": ["left", "right"], "position": r[:2], "velocity": r[2:4],
                       "effort": r[4:6]})
        gps = [48.1 + r[0] * 1e-4, 11.5 + r[1] * 1e-4, 500 + r[2], 0, 1.0, 2.0, 3.0]
        add("/gps/fix", "sensor_msgs/msg/NavSatFix", lambda t: {"fix": gps}, i, lambda t: {
            "header": header(t, "gps"), "latitude": gps[0], "longitude": gps[1], "altitude": gps[2],
            "position_covariance": [1.0, 0, 0, 0, 2.0, 0, 0, 0, 3.0]})
        pose = {"position": dict(zip("xyz", r[:3])), "orientation": dict(zip("xyzw", q))}
        twist = {"linear": dict(zip("xyz", r[3:6])), "angular": dict(zip("xyz", r[6:9]))}
        add("/odom", "nav_msgs/msg/Odometry", lambda t: {"odom/pose": np.r_[r[:3], q], "odom/twist": r[3:9]}, i,
            lambda t: {"header": header(t, "odom"), "child_frame_id": "base_link", "pose": {"pose": pose},
                       "twist": {"twist": twist}})
        add("/pose", "geometry_msgs/msg/PoseStamped", lambda t: {"pose": np.r_[r[:3], q]}, i,
            lambda t: {"header": header(t, "map"), "pose": pose})
        add("/amcl_pose", "geometry_msgs/msg/PoseWithCovarianceStamped", lambda t: {"amcl_pose": np.r_[r[:3], q]}, i,
            lambda t: {"header": header(t, "map"), "pose": {"pose": pose}})
        add("/cmd_vel", "geometry_msgs/msg/TwistStamped", lambda t: {"cmd_vel": r[3:9]}, i,
            lambda t: {"header": header(t, "base_link"), "twist": twist})
        rng_m = float(abs(r[9]) + 0.5)
        add("/sonar", "sensor_msgs/msg/Range", lambda t: {"sonar": rng_m}, i,
            lambda t: {"header": header(t, "sonar"), "range": rng_m, "min_range": 0.1, "max_range": 4.0})
        for enc, pad in (("mono8", 3), ("mono16", 0), ("rgb8", 0), ("bgr8", 2), ("rgba8", 0), ("bgra8", 0)):
            msg, img = _image_msgs(rng, 0, enc, pad=pad)
            add(f"/cam_{enc}/image_raw", "sensor_msgs/msg/Image", lambda t, img=img: {f"cam_{enc}": img}, i,
                lambda t, msg=msg: {**msg, "header": header(t, "cam")})
        for fmt in ("png", "jpeg"):
            img = _smooth_image(rng)
            add(f"/cam_{fmt}/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                lambda t, img=img: {f"cam_{fmt}": img}, i, lambda t, img=img: compressed_msg(t, img, fmt))
    msgs.sort(key=lambda m: m[1])
    return conns, msgs, {k: (np.array(t, np.int64), np.array(x)) for k, (t, x) in expected.items()}
