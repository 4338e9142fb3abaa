"""Import throughput (MB/s, messages/s) next to the time the format's own library takes to read it.

Bags: generates an image-heavy bag (raw rgb8 frames, plus a jpeg variant) and an IMU-only bag, then
for each: reads and deserializes every message with rosbags (the floor), and imports it with
seqsense (deserialize + convert + write). Target: importing costs at most 2x reading. Because the
import must also write the log, the time h5py takes to write that many bytes is shown beside it.

Other sources (`--sources ulog,images,tables`): a generated PX4 ULog against pyulog's parse, a folder
of PNG frames against a cv2.imread loop, and a CSV table against numpy.loadtxt.

    python -m benchmarks.bench_import [--storage rosbag1|sqlite3|mcap] [--imu 100000] [--frames 400]
    python -m benchmarks.bench_import --sources ulog,images,tables [--ulog-seconds 600] [--rows 500000]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from seqsense.importers import ImportOptions, import_sources
from seqsense.importers.synthetic import compressed_msg, header, write_bag


def _bag_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def imu_messages(n: int, seed: int = 0):
    """`n` Imu messages at 200 Hz."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        t = 10**18 + i * 5_000_000
        r = rng.normal(size=6)
        yield "/imu/data", t, {"header": header(t, "imu"), "orientation_covariance": [-1.0] + [0.0] * 8,
                               "linear_acceleration": dict(zip("xyz", r[:3])), "angular_velocity": dict(zip("xyz", r[3:]))}


def image_messages(n: int, w: int, h: int, jpeg: bool, seed: int = 0):
    """`n` camera frames at 30 Hz (rgb8 Image, or jpeg CompressedImage), with a 200 Hz IMU alongside."""
    rng = np.random.default_rng(seed)
    # A camera-like scene: smooth gradients plus sensor noise (pure noise would make jpeg unrealistically slow).
    yy, xx = np.mgrid[0:h, 0:w]
    scene = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1) + rng.normal(0, 6, (h, w, 3))
    base = np.clip(scene, 0, 255).astype(np.uint8)
    imu = imu_messages(n * 200 // 30 + 1, seed)
    next_imu = next(imu)
    for i in range(n):
        t = 10**18 + i * 33_333_333
        while next_imu is not None and next_imu[1] < t:
            yield next_imu
            next_imu = next(imu, None)
        img = np.roll(base, i, axis=1)
        if jpeg:
            yield "/camera/image_raw/compressed", t, compressed_msg(t, img, "jpeg")
        else:
            yield "/camera/image_raw", t, {"header": header(t, "cam"), "height": h, "width": w, "encoding": "rgb8",
                                           "step": w * 3, "data": img.ravel()}


def read_only(path: Path) -> tuple[float, int]:
    """Seconds rosbags takes to read and deserialize every message; and the message count."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    t0 = time.perf_counter()
    n = 0
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        for conn, _, raw in reader.messages():
            reader.deserialize(raw, conn.msgtype)
            n += 1
    return time.perf_counter() - t0, n


def write_floor(out: Path) -> float:
    """Seconds h5py takes to write as many bytes as the imported log holds, in 16 MB blocks."""
    import h5py

    with h5py.File(out, "r") as f:
        sizes = []
        f.visititems(lambda _, obj: sizes.append(obj.id.get_storage_size()) if isinstance(obj, h5py.Dataset) else None)
    block = np.zeros(16 * 1024 * 1024, np.uint8)
    n_blocks = max(1, sum(sizes) // block.size)
    scratch = out.with_suffix(".floor.h5")
    t0 = time.perf_counter()
    with h5py.File(scratch, "w") as f:
        ds = f.create_dataset("x", (n_blocks * block.size,), np.uint8, chunks=(block.size,))
        for i in range(n_blocks):
            ds[i * block.size : (i + 1) * block.size] = block
    seconds = time.perf_counter() - t0
    scratch.unlink()
    return seconds


def bench(name: str, path: Path, out: Path, repeat: int) -> dict:
    """Best-of-`repeat` read and import times for one bag."""
    read_s, imp_s, n = [], [], 0
    for _ in range(repeat):
        s, n = read_only(path)
        read_s.append(s)
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        import_sources([path], out, options=ImportOptions(progress=False), notify=lambda _: None)
        imp_s.append(time.perf_counter() - t0)
    floor_s = min(write_floor(out) for _ in range(repeat))
    mb = _bag_bytes(path) / 1e6
    r, i = min(read_s), min(imp_s)
    return {"bag": name, "MB": mb, "messages": n, "read_s": r, "import_s": i, "import_MB_s": mb / i,
            "import_msg_s": n / i, "read_msg_s": n / r, "ratio": i / r, "write_s": floor_s,
            "out_MB": out.stat().st_size / 1e6}


def big_ulog(path: Path, seconds: float, seed: int = 0) -> Path:
    """A flight-like ULog: sensor_combined 200 Hz, two sensor_accel instances 200 Hz, vehicle_attitude 100 Hz,
    vehicle_local_position 50 Hz (20 fields), vehicle_gps_position 5 Hz."""
    from seqsense.importers.samples import ULogTopic, write_ulog

    rng = np.random.default_rng(seed)

    def t(rate):
        return (10_000_000 + np.arange(int(seconds * rate)) * (1e6 / rate)).astype(np.uint64)

    def f(n, k=None):
        return rng.normal(size=(n,) if k is None else (n, k)).astype(np.float32)

    t200, t100, t50, t5 = t(200), t(100), t(50), t(5)
    topics = [ULogTopic("sensor_combined", [("float[3]", "gyro_rad"), ("uint32_t", "gyro_integral_dt"),
                                            ("float[3]", "accelerometer_m_s2")],
                        t200, {"gyro_rad": f(len(t200), 3), "gyro_integral_dt": np.full(len(t200), 5000),
                               "accelerometer_m_s2": f(len(t200), 3)})]
    topics += [ULogTopic("sensor_accel", [("uint64_t", "timestamp_sample"), ("uint32_t", "device_id"), ("float", "x"),
                                          ("float", "y"), ("float", "z"), ("float", "temperature")], t200 + i,
                         {"timestamp_sample": t200, "device_id": np.full(len(t200), i), "x": f(len(t200)),
                          "y": f(len(t200)), "z": f(len(t200)), "temperature": f(len(t200))}, i) for i in (0, 1)]
    topics += [ULogTopic("vehicle_attitude", [("float[4]", "q")], t100, {"q": f(len(t100), 4)}),
               ULogTopic("vehicle_local_position", [("float[20]", "v")], t50, {"v": f(len(t50), 20)}),
               ULogTopic("vehicle_gps_position", [("int32_t", "lat"), ("int32_t", "lon"), ("float", "alt")], t5,
                         {"lat": np.full(len(t5), 473_977_420), "lon": np.full(len(t5), 85_455_940), "alt": f(len(t5))})]
    return write_ulog(path, topics)


def png_folder(root: Path, n: int, w: int, h: int, seed: int = 0) -> Path:
    """`n` RGB PNG frames of a camera-like scene, for an image-folder import at a fixed rate."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    scene = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1) + rng.normal(0, 3, (h, w, 3))
    base = np.clip(scene, 0, 255).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(root / f"{i:06d}.png"), np.roll(base, i, axis=1))
    return root


def csv_table(path: Path, rows: int, seed: int = 0) -> Path:
    """A CSV of `rows` IMU samples: time_s and six channels."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([(np.arange(rows) / 200.0)[:, None], rng.normal(size=(rows, 6))], axis=1)
    np.savetxt(path, x, delimiter=",", fmt="%.9g", header="time_s,ax,ay,az,gx,gy,gz", comments="")
    return path


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_sources(names: list[str], work: Path, args) -> list[dict]:
    """Best-of-`repeat` bare-read and import times for a ULog, a PNG folder and a CSV table."""
    out = work / "src.h5"
    rows = []

    def importing(src, settings=None):
        def run():
            out.unlink(missing_ok=True)
            import_sources([src], out, options=ImportOptions(progress=False), notify=lambda _: None, settings=settings)
        return run

    if "ulog" in names:
        from seqsense.importers.ulog import parse_ulog

        real = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "px4_sample_log_small.ulg"
        logs = [(f"PX4 ULog, generated, {args.ulog_seconds:g} s, 6 topic instances",
                 big_ulog(work / "flight.ulg", args.ulog_seconds))]
        if real.exists():
            logs.append(("PX4 ULog, real sample log, 70 topic instances", real))
        for label, src in logs:
            log, _ = parse_ulog(src)
            n = sum(len(d.data["timestamp"]) for d in log.data_list)
            rows.append({"source": label, "MB": src.stat().st_size / 1e6, "items": n, "unit": "msgs",
                         "floor": "pyulog parse", "read_s": _best(lambda: parse_ulog(src), args.repeat),
                         "import_s": _best(importing(src), args.repeat)})
    if "images" in names:
        import cv2

        w, h = (int(v) for v in args.size.split("x"))
        folder = png_folder(work / "frames", args.frames, w, h)
        files = sorted(folder.iterdir())
        rows.append({"source": f"image folder, {args.frames} RGB PNG {w}x{h}, --fps 30",
                     "MB": sum(p.stat().st_size for p in files) / 1e6, "items": len(files), "unit": "frames",
                     "floor": "cv2.imread loop", "read_s": _best(lambda: [cv2.imread(str(p)) for p in files], args.repeat),
                     "import_s": _best(importing(folder, {"fps": 30.0}), args.repeat)})
    if "tables" in names:
        src = csv_table(work / "imu.csv", args.rows)
        rows.append({"source": f"CSV table, {args.rows} rows x 7 columns", "MB": src.stat().st_size / 1e6,
                     "items": args.rows, "unit": "rows", "floor": "numpy.loadtxt",
                     "read_s": _best(lambda: np.loadtxt(src, delimiter=",", skiprows=1), args.repeat),
                     "import_s": _best(importing(src), args.repeat)})
    return rows


def main() -> None:
    """Generate the sources, time reading and importing them, print Markdown tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default="bags", help="comma-separated: bags, ulog, images, tables (default: bags)")
    ap.add_argument("--ulog-seconds", type=float, default=600.0, help="flight length of the generated ULog")
    ap.add_argument("--rows", type=int, default=500_000, help="rows of the CSV table")
    ap.add_argument("--storage", default="rosbag1", choices=["rosbag1", "sqlite3", "mcap"])
    ap.add_argument("--imu", type=int, default=100_000, help="messages in the IMU-only bag")
    ap.add_argument("--frames", type=int, default=400, help="frames in the image bags")
    ap.add_argument("--size", default="640x480", help="frame size WxH")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_import_"))
    work.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.sources.split(",") if n.strip()]
    unknown = set(names) - {"bags", "ulog", "images", "tables"}
    if unknown:
        ap.error(f"unknown --sources {sorted(unknown)}; valid: bags, ulog, images, tables")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    try:
        if "bags" in names:
            _bench_bags(args, work, w, h, cpu)
        others = [n for n in names if n != "bags"]
        if others:
            rows = bench_sources(others, work, args)
            print(f"date: {datetime.date.today()}  machine: nproc={os.cpu_count()}, {cpu}")
            print("| source | MB | items | bare read | read s | import s | import MB/s | import items/s | import / read |")
            print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
            for r in rows:
                print(f"| {r['source']} | {r['MB']:.1f} | {r['items']} {r['unit']} | {r['floor']} | {r['read_s']:.2f} | "
                      f"{r['import_s']:.2f} | {r['MB'] / r['import_s']:.1f} | {r['items'] / r['import_s']:.0f} | "
                      f"{r['import_s'] / r['read_s']:.2f}x |")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _bench_bags(args, work: Path, w: int, h: int, cpu: str) -> None:
    """The bag rows: rosbags read vs seqsense import, with the h5py write floor."""
    suffix = ".bag" if args.storage == "rosbag1" else ""
    bags = {
        f"IMU only ({args.imu} Imu msgs)": (write_bag(work / f"imu{suffix}", args.storage,
                                                      {"/imu/data": "sensor_msgs/msg/Imu"}, imu_messages(args.imu))),
        f"images rgb8 {w}x{h} ({args.frames} frames + 200 Hz IMU)": write_bag(
            work / f"raw{suffix}", args.storage, {"/imu/data": "sensor_msgs/msg/Imu", "/camera/image_raw":
                                                  "sensor_msgs/msg/Image"}, image_messages(args.frames, w, h, False)),
        f"images jpeg {w}x{h} ({args.frames} frames + 200 Hz IMU)": write_bag(
            work / f"jpeg{suffix}", args.storage, {"/imu/data": "sensor_msgs/msg/Imu", "/camera/image_raw/compressed":
                                                   "sensor_msgs/msg/CompressedImage"}, image_messages(args.frames, w, h, True)),
    }
    rows = [bench(name, path, work / "out.h5", args.repeat) for name, path in bags.items()]
    print(f"date: {datetime.date.today()}  machine: nproc={os.cpu_count()}, {cpu}  storage: {args.storage}")
    print("| bag | bag MB | messages | rosbags read s | import s | import MB/s | import msg/s | import / read "
          "| log MB | h5py write of log size s | import / (read + write) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['bag']} | {r['MB']:.1f} | {r['messages']} | {r['read_s']:.2f} | {r['import_s']:.2f} | "
              f"{r['import_MB_s']:.1f} | {r['import_msg_s']:.0f} | {r['ratio']:.2f}x | {r['out_MB']:.0f} | "
              f"{r['write_s']:.2f} | {r['import_s'] / (r['read_s'] + r['write_s']):.2f}x |")


if __name__ == "__main__":
    main()
