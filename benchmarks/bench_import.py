"""Import throughput (MB/s, messages/s) next to the time rosbags alone takes to read the same bag.

Generates an image-heavy bag (raw rgb8 frames, plus a jpeg variant) and an IMU-only bag, then for
each: reads and deserializes every message with rosbags (the floor), and imports it with seqsense
(deserialize + convert + write). Target: importing costs at most 2x reading. Because the import
must also write the log, the time h5py takes to write that many bytes is shown beside it.

    python -m benchmarks.bench_import [--storage rosbag1|sqlite3|mcap] [--imu 100000] [--frames 400]
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


def main() -> None:
    """Generate the bags, time reading and importing them, print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    suffix = ".bag" if args.storage == "rosbag1" else ""
    try:
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
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
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
