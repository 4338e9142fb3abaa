"""Tiny sources of every registered format, written by each format's published layout (tests, benchmarks).

`write_ulog` writes a ULog file by the PX4 ULog format description (docs.px4.io, "ULog File
Format"): the 16-byte header (magic, version 1, start time in µs), a flag-bits message, one format
('F') message per topic, info ('I') messages, then the data section with a subscription ('A') per
topic instance and the data ('D') messages in time order (plus dropouts 'O' where asked). pyulog
has no writer of its own (only `ULog.write_ulog`, which re-writes a parsed log).

`write_euroc`, `write_tum_rgbd`, `write_image_folder` and `write_table` write the other layouts;
`sample_source(name, folder)` writes a small valid source of any registered format and returns
`(path, settings)`, the settings its import needs (e.g. `fps`).
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import cv2
import numpy as np

ULOG_TYPES = {"int8_t": "<i1", "uint8_t": "<u1", "int16_t": "<i2", "uint16_t": "<u2", "int32_t": "<i4",
              "uint32_t": "<u4", "int64_t": "<i8", "uint64_t": "<u8", "float": "<f4", "double": "<f8",
              "bool": "<u1", "char": "<i1"}


@dataclasses.dataclass
class ULogTopic:
    """One logged topic instance: its fields (type, name; `float[3]` for arrays), times and values."""

    name: str
    fields: list[tuple[str, str]]  # without the leading `uint64_t timestamp`
    t_us: np.ndarray  # (N,)
    values: dict[str, np.ndarray]  # field name -> (N,) or (N, k) for arrays
    instance: int = 0


def _msg(kind: str, payload: bytes) -> bytes:
    return struct.pack("<HB", len(payload), ord(kind)) + payload


def _info(key_type: str, key: str, value: str) -> bytes:
    k = f"{key_type} {key}".encode()
    return _msg("I", bytes([len(k)]) + k + value.encode())


def _dtype(topic: ULogTopic) -> np.dtype:
    parts = [("timestamp", "<u8")]
    for ftype, fname in topic.fields:
        base, _, n = ftype.partition("[")
        if n:
            parts += [(f"{fname}[{i}]", ULOG_TYPES[base]) for i in range(int(n.rstrip("]")))]
        else:
            parts.append((fname, ULOG_TYPES[base]))
    return np.dtype(parts)  # packed, as ULog data messages are


def write_ulog(path: str | Path, topics: list[ULogTopic], start_us: int = 0, info: dict | None = None,
               dropouts: list[tuple[int, int]] = ()) -> Path:
    """Write `topics` as a ULog file; `dropouts` are (time µs, duration ms) pairs. Returns the path."""
    path = Path(path)
    out = bytearray(b"ULog\x01\x12\x35" + bytes([1]) + struct.pack("<Q", start_us))
    out += _msg("B", bytes(16) + struct.pack("<3Q", 0, 0, 0))  # no compat/incompat flags, nothing appended
    formats = {}
    for tp in topics:
        spec = "".join(f"{ftype} {fname};" for ftype, fname in [("uint64_t", "timestamp"), *tp.fields])
        formats.setdefault(tp.name, f"{tp.name}:{spec}")
    for fmt in formats.values():
        out += _msg("F", fmt.encode())
    for key, value in {"sys_name": "seqsense-sample", "ver_hw": "SAMPLE", **(info or {})}.items():
        out += _info(f"char[{len(str(value))}]", key, str(value))
    events = []  # (time µs, order, bytes) of the data section
    for msg_id, tp in enumerate(topics):
        out += _msg("A", struct.pack("<BH", tp.instance, msg_id) + tp.name.encode())
        rec = np.zeros(len(tp.t_us), _dtype(tp))
        rec["timestamp"] = tp.t_us
        for ftype, fname in tp.fields:
            v = np.asarray(tp.values[fname])
            if "[" in ftype:
                for i in range(v.shape[1]):
                    rec[f"{fname}[{i}]"] = v[:, i]
            else:
                rec[fname] = v
        head = struct.pack("<HBH", 2 + rec.dtype.itemsize, ord("D"), msg_id)
        raw = rec.tobytes()
        size = rec.dtype.itemsize
        # Merged by time, each topic in its own order (running maximum: stamps that go backwards stay put).
        order_t = np.maximum.accumulate(np.asarray(tp.t_us, np.uint64)) if len(tp.t_us) else []
        events += [(int(t), msg_id, i, head + raw[i * size : (i + 1) * size]) for i, t in enumerate(order_t)]
    events += [(int(t), -1, 0, _msg("O", struct.pack("<H", ms))) for t, ms in dropouts]
    events.sort(key=lambda e: e[:3])
    out += b"".join(e[3] for e in events)
    path.write_bytes(bytes(out))
    return path


def sample_ulog(path: str | Path, seconds: float = 2.0, seed: int = 0) -> Path:
    """A small flight-like log: sensor_combined 100 Hz, two sensor_accel instances at 50 Hz,
    vehicle_attitude 50 Hz (unit quaternion q[4]), vehicle_gps_position 5 Hz (int32 lat/lon, a NaN)."""
    rng = np.random.default_rng(seed)
    t0 = 20_000_000

    def times(rate):
        return (t0 + np.arange(int(seconds * rate)) * (1e6 / rate)).astype(np.uint64)

    t100, t50, t5 = times(100), times(50), times(5)
    w = np.linspace(0, 4 * np.pi, len(t50))
    q = np.stack([np.cos(w / 2), np.sin(w / 2) * 0.6, np.sin(w / 2) * 0.8, 0 * w], 1)
    vel = rng.normal(size=len(t5)).astype(np.float32)
    vel[1] = np.nan
    topics = [
        ULogTopic("sensor_combined", [("float[3]", "gyro_rad"), ("uint32_t", "gyro_integral_dt"),
                                      ("float[3]", "accelerometer_m_s2"), ("uint8_t", "accelerometer_clipping")],
                  t100, {"gyro_rad": rng.normal(size=(len(t100), 3)), "gyro_integral_dt": np.full(len(t100), 10000),
                         "accelerometer_m_s2": rng.normal(size=(len(t100), 3)) + [0, 0, -9.81],
                         "accelerometer_clipping": np.zeros(len(t100))}),
        *[ULogTopic("sensor_accel", [("uint64_t", "timestamp_sample"), ("uint32_t", "device_id"), ("float", "x"),
                                     ("float", "y"), ("float", "z"), ("float", "temperature")],
                    t50 + i, {"timestamp_sample": t50 - 500, "device_id": np.full(len(t50), 1000 + i),
                              "x": rng.normal(size=len(t50)), "y": rng.normal(size=len(t50)),
                              "z": rng.normal(size=len(t50)) - 9.81, "temperature": np.full(len(t50), 30.0 + i)}, i)
          for i in (0, 1)],
        ULogTopic("vehicle_attitude", [("float[4]", "q"), ("float[3]", "delta_q_reset")], t50,
                  {"q": q, "delta_q_reset": np.zeros((len(t50), 3))}),
        ULogTopic("vehicle_gps_position", [("int32_t", "lat"), ("int32_t", "lon"), ("float", "vel_m_s")], t5,
                  {"lat": np.full(len(t5), 473_977_420), "lon": np.full(len(t5), 85_455_940), "vel_m_s": vel}),
    ]
    return write_ulog(path, topics, start_us=t0 - 1000)


def _frame(i: int, w: int, h: int, channels: int, rng) -> np.ndarray:
    """A frame with a bright square moving to the right (and noise), uint8 (H, W, C)."""
    img = rng.integers(0, 40, size=(h, w, channels), dtype=np.uint8)
    x = (2 * i) % max(1, w - 4)
    img[h // 3 : h // 3 + 4, x : x + 4] = 220
    return img


def _write_frame(path: Path, img: np.ndarray) -> None:
    if img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok = cv2.imwrite(str(path), img)
    if not ok:
        raise OSError(f"cannot write {path}")


def write_euroc(root: str | Path, n_frames: int = 12, size=(16, 12), seed: int = 0, t0_ns: int = 1403636579763555584,
                truth: str = "state_groundtruth_estimate0") -> Path:
    """A EuRoC/ASL sequence: mav0/cam0 (grey PNG, 20 Hz), mav0/imu0 (200 Hz), and ground truth (200 Hz)
    in `truth` (state_groundtruth_estimate0, vicon0 or leica0), with the published headers."""
    rng = np.random.default_rng(seed)
    mav = Path(root) / "mav0"
    (mav / "cam0" / "data").mkdir(parents=True, exist_ok=True)
    t_cam = t0_ns + np.arange(n_frames, dtype=np.int64) * 50_000_000
    lines = ["#timestamp [ns],filename"]
    for i, t in enumerate(t_cam):
        _write_frame(mav / "cam0" / "data" / f"{t}.png", _frame(i, *size, 1, rng))
        lines.append(f"{t},{t}.png")
    (mav / "cam0" / "data.csv").write_text("\n".join(lines) + "\n")
    n_imu = n_frames * 10
    t_imu = t0_ns - 2_000_000 + np.arange(n_imu, dtype=np.int64) * 5_000_000
    gyr, acc = rng.normal(size=(n_imu, 3)) * 0.1, rng.normal(size=(n_imu, 3)) * 0.1 + [9.81, 0, 0]
    (mav / "imu0").mkdir(exist_ok=True)
    head = ("#timestamp [ns],w_RS_S_x [rad s^-1],w_RS_S_y [rad s^-1],w_RS_S_z [rad s^-1],"
            "a_RS_S_x [m s^-2],a_RS_S_y [m s^-2],a_RS_S_z [m s^-2]")
    rows = [f"{t}," + ",".join(f"{v:.17g}" for v in (*g, *a)) for t, g, a in zip(t_imu, gyr, acc)]
    (mav / "imu0" / "data.csv").write_text(head + "\n" + "\n".join(rows) + "\n")
    pos = np.cumsum(rng.normal(size=(n_imu, 3)) * 0.01, axis=0)
    q = rng.normal(size=(n_imu, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    (mav / truth).mkdir(exist_ok=True)
    if truth == "state_groundtruth_estimate0":
        head = ("#timestamp, p_RS_R_x [m], p_RS_R_y [m], p_RS_R_z [m], q_RS_w [], q_RS_x [], q_RS_y [], q_RS_z [], "
                "v_RS_R_x [m s^-1], v_RS_R_y [m s^-1], v_RS_R_z [m s^-1], b_w_RS_S_x [rad s^-1], "
                "b_w_RS_S_y [rad s^-1], b_w_RS_S_z [rad s^-1], b_a_RS_S_x [m s^-2], b_a_RS_S_y [m s^-2], "
                "b_a_RS_S_z [m s^-2]")
        vals = np.concatenate([pos, q, np.gradient(pos, axis=0) * 200, np.full((n_imu, 3), 1e-3),
                               np.full((n_imu, 3), 0.05)], axis=1)
    elif truth == "vicon0":
        head = "#timestamp [ns], p_RS_R_x [m], p_RS_R_y [m], p_RS_R_z [m], q_RS_w [], q_RS_x [], q_RS_y [], q_RS_z []"
        vals = np.concatenate([pos, q], axis=1)
    else:
        head = "#timestamp [ns], p_RS_R_x [m], p_RS_R_y [m], p_RS_R_z [m]"
        vals = pos
    rows = [f"{t}," + ",".join(f"{v:.9g}" for v in r) for t, r in zip(t_imu, vals)]
    (mav / truth / "data.csv").write_text(head + "\n" + "\n".join(rows) + "\n")
    return Path(root)


def write_tum_rgbd(root: str | Path, n_frames: int = 12, size=(16, 12), seed: int = 0, depth: bool = True) -> Path:
    """A TUM RGB-D sequence: rgb.txt + rgb/*.png (30 Hz), depth.txt + 16-bit depth/*.png, accelerometer.txt,
    groundtruth.txt (100 Hz, quaternions x, y, z, w), with the published comment headers."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    bag = f"# file: 'rgbd_dataset_{root.name}.bag'"
    t0 = 1305031102.175304
    t_rgb = [f"{t0 + i / 30:.6f}" for i in range(n_frames)]
    for i, ts in enumerate(t_rgb):
        _write_frame(root / "rgb" / f"{ts}.png", _frame(i, *size, 3, rng))
    (root / "rgb.txt").write_text("\n".join(["# color images", bag, "# timestamp filename"]
                                            + [f"{ts} rgb/{ts}.png" for ts in t_rgb]) + "\n")
    if depth:
        (root / "depth").mkdir(exist_ok=True)
        t_d = [f"{t0 - 0.015 + i / 30:.6f}" for i in range(n_frames)]
        for ts in t_d:
            cv2.imwrite(str(root / "depth" / f"{ts}.png"), np.full(size[::-1], 5000, np.uint16))
        (root / "depth.txt").write_text("\n".join(["# depth maps", bag, "# timestamp filename"]
                                                  + [f"{ts} depth/{ts}.png" for ts in t_d]) + "\n")
    n = n_frames * 3
    t_acc = [f"{t0 - 0.01 + i / 100:.4f}" for i in range(n)]
    acc = rng.normal(size=(n, 3)) * 0.1 + [0, -9.81, 0]
    (root / "accelerometer.txt").write_text("\n".join(["# accelerometer data", bag, "# timestamp ax ay az"] + [
        f"{ts} {a[0]:.6f} {a[1]:.6f} {a[2]:.6f}" for ts, a in zip(t_acc, acc)]) + "\n")
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    pos = 1 + np.cumsum(rng.normal(size=(n, 3)) * 0.01, axis=0)
    t_gt = [f"{t0 - 0.005 + i / 100:.4f}" for i in range(n)]
    (root / "groundtruth.txt").write_text("\n".join(["# ground truth trajectory", bag,
                                                     "# timestamp tx ty tz qx qy qz qw"] + [
        f"{ts} " + " ".join(f"{v:.4f}" for v in (*p, *qq)) for ts, p, qq in zip(t_gt, pos, q)]) + "\n")
    return root


def write_image_folder(root: str | Path, n_frames: int = 12, size=(16, 12), layout: str = "otb", seed: int = 0,
                       times: bool = False) -> Path:
    """A tracking sequence with a box per frame: `otb` (img/0001.jpg + groundtruth_rect.txt, x,y,w,h),
    `vot` (color/00000001.jpg + groundtruth.txt, 8-value polygons) or `plain` (frames only); with
    `times`, a times.txt of `t_ns` values (30 Hz)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    folder = root / {"otb": "img", "vot": "color", "plain": "."}[layout]
    folder.mkdir(parents=True, exist_ok=True)
    boxes = []
    for i in range(n_frames):
        img = _frame(i, *size, 3, rng)
        name = f"{i + 1:04d}.jpg" if layout == "otb" else f"{i + 1:08d}.jpg" if layout == "vot" else f"frame{i}.png"
        _write_frame(folder / name, img)
        boxes.append(((2 * i) % max(1, size[0] - 4), size[1] // 3, 4, 4))
    if layout == "otb":
        (root / "groundtruth_rect.txt").write_text("\n".join(f"{x},{y},{w},{h}" for x, y, w, h in boxes) + "\n")
    elif layout == "vot":
        (root / "groundtruth.txt").write_text("\n".join(
            f"{x:.2f},{y:.2f},{x + w:.2f},{y:.2f},{x + w:.2f},{y + h:.2f},{x:.2f},{y + h:.2f}" for x, y, w, h in boxes) + "\n")
    if times:
        (root / "times.txt").write_text("t_ns\n" + "\n".join(str(10**9 + i * 33_333_333) for i in range(n_frames)) + "\n")
    return root


def write_table(path: str | Path, n: int = 200, delimiter: str = ",", header: str = "one", seed: int = 0,
                rate_hz: float = 100.0) -> Path:
    """A table of a 3-axis accelerometer and a 1-D gyro at `rate_hz`: `header` "one" (`time_s,ax,...`),
    "two" (groups `accel`/`gyro` over fields, time `Time (s)`) or "none"; `delimiter` "," ";" "\\t" or " "."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate_hz
    x = np.concatenate([np.sin(t)[:, None] + rng.normal(size=(n, 3)) * 0.01, np.cos(t)[:, None]], axis=1)
    d = delimiter
    if header == "one":
        head = [d.join(["time_s", "ax", "ay", "az", "gz"])]
    elif header == "two":
        head = [d.join(["", "accel", "", "", "gyro"]), d.join(["Time (s)", "x", "y", "z", "z"])]
    else:
        head = []
    rows = [d.join(f"{v:.9g}" for v in (ti, *r)) for ti, r in zip(t, x)]
    Path(path).write_text("\n".join(head + rows) + "\n")
    return Path(path)


def sample_source(name: str, folder: str | Path) -> tuple[Path, dict]:
    """A small valid source of the registered format `name` in `folder`, and the settings its import needs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if name in ("rosbag1", "rosbag2", "mcap"):
        from seqsense.importers.synthetic import sample_topics, write_bag

        conns, msgs, _ = sample_topics(n=4)
        storage = {"rosbag1": "rosbag1", "rosbag2": "sqlite3", "mcap": "mcap"}[name]
        bag = write_bag(folder / ("run.bag" if name == "rosbag1" else "run"), storage, conns, msgs)
        return (next(bag.glob("*.mcap")) if name == "mcap" else bag), {}
    if name == "ulog":
        return sample_ulog(folder / "flight.ulg"), {}
    if name == "euroc":
        return write_euroc(folder / "MH_sample"), {}
    if name == "tum_rgbd":
        return write_tum_rgbd(folder / "rgbd_dataset_sample"), {}
    if name == "images":
        return write_image_folder(folder / "Sample", layout="otb"), {"fps": 30.0}
    if name == "csv":
        return write_table(folder / "imu.csv", delimiter=";", header="two"), {}
    if name == "video":
        video = folder / "clip.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
        for i in range(6):
            writer.write(np.full((24, 32, 3), 20 * i, np.uint8))
        writer.release()
        return video, {"fps": 10.0}
    if name == "hdf5":
        import h5py

        path = folder / "trial.hdf5"
        with h5py.File(path, "w") as f:
            f.attrs["sampling_rate"] = 100.0
            f["imu_acc"] = np.random.default_rng(0).normal(size=(50, 3))
        return path, {}
    raise KeyError(f"no sample source for format {name!r}; add one to seqsense/importers/samples.py")
