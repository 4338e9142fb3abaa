"""Windows per second through a torch DataLoader (batch 64) for frame and sensor-only windows.

    python -m benchmarks.bench_dataset [--quick] [--chunks 1,4,16]

(a) T=10 windows of 84×84×3 uint8 frames plus a 10-dim vector, uncompressed and lzf-compressed,
(b) sensor-only windows (a 200 Hz 6-dim IMU packed 10 per tick plus a 10-dim vector at 20 Hz),
each with 0 and 2 DataLoader workers on a warm page cache. Peak RSS is reported to show memory
stays bounded (the log is far larger than what the loader holds).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np

from seqsense.dataset import WindowDataset, WindowSpec, episode_refs, make_loader
from seqsense.log import LogWriter

MS = 1_000_000


def write_frames_log(path, episodes: int, frames: int, compression, chunk: int) -> None:
    """Episodes of 84×84×3 frames at 20 Hz plus a 10-dim vector per frame."""
    rng = np.random.default_rng(0)
    block = rng.integers(0, 255, (frames, 84, 84, 3), dtype=np.uint8)
    with LogWriter(path) as w:
        for e in range(episodes):
            ep = w.episode(f"ep_{e:03d}")
            t = np.arange(frames) * 50 * MS
            ep.write_stream("camera", "image", t, block, rate_hz=20, compression=compression, chunk_samples=chunk)
            ep.write_stream("state", "vector", t, rng.normal(size=(frames, 10)), rate_hz=20)
            ep.write_stream("truth/x", "vector", t, rng.normal(size=(frames, 2)), rate_hz=20)


def write_sensor_log(path, episodes: int, seconds: int) -> None:
    """Episodes of a 200 Hz IMU and a 20 Hz 10-dim state with a 20 Hz target."""
    rng = np.random.default_rng(1)
    with LogWriter(path) as w:
        for e in range(episodes):
            ep = w.episode(f"ep_{e:03d}")
            ti = np.arange(seconds * 200) * 5 * MS
            ep.write_stream("imu", "vector", ti, rng.normal(size=(len(ti), 6)), rate_hz=200)
            ts = np.arange(seconds * 20) * 50 * MS
            ep.write_stream("state", "vector", ts, rng.normal(size=(len(ts), 10)), rate_hz=20)
            ep.write_stream("truth/x", "vector", ts, rng.normal(size=(len(ts), 2)), rate_hz=20)


def measure(ds: WindowDataset, workers: int, min_windows: int) -> float:
    """Windows per second over at least `min_windows` windows after one warm-up pass."""
    loader = make_loader(ds, batch_size=64, shuffle=True, num_workers=workers, seed=0)
    for _ in loader:  # warm-up: page cache, worker start, per-episode indices
        pass
    n, t0 = 0, time.perf_counter()
    while n < min_windows:
        for batch in loader:
            n += batch["t_ns"].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows (a smoke run)")
    parser.add_argument("--chunks", default="4", help="image chunk sizes (frames) to compare, comma-separated")
    args = parser.parse_args()
    min_windows = 2_000 if args.quick else 10_000
    tmp = tempfile.mkdtemp(prefix="seqsense-bench-")
    rows = []
    frame_spec = WindowSpec(inputs=("camera", "state"), target="truth/x", window=10, stride=1)
    for chunk in [int(c) for c in args.chunks.split(",")]:
        for compression in (None, "lzf"):
            path = os.path.join(tmp, f"frames_{compression}_{chunk}.h5")
            write_frames_log(path, episodes=8, frames=600, compression=compression, chunk=chunk)
            size_mb = os.path.getsize(path) / 1e6
            ds = WindowDataset(episode_refs([path]), frame_spec)
            for workers in (0, 2):
                wps = measure(ds, workers, min_windows)
                rows.append((f"84x84x3 T=10 {compression or 'uncompressed'} chunk={chunk}", workers, wps, wps * 10, size_mb))
                print(rows[-1], flush=True)
    path = os.path.join(tmp, "sensors.h5")
    write_sensor_log(path, episodes=8, seconds=120)
    spec = WindowSpec(inputs=("imu", "state"), target="truth/x", window=10, stride=1, packed={"imu": 10})
    ds = WindowDataset(episode_refs([path]), spec)
    for workers in (0, 2):
        wps = measure(ds, workers, min_windows)
        rows.append(("sensor-only T=10 (imu packed 10 + state)", workers, wps, float("nan"), os.path.getsize(path) / 1e6))
        print(rows[-1], flush=True)
    print()
    print("| windows | workers | windows/s | frames/s | log MB |")
    print("|---|---|---|---|---|")
    for name, workers, wps, fps, mb in rows:
        print(f"| {name} | {workers} | {wps:,.0f} | {'-' if np.isnan(fps) else f'{fps:,.0f}'} | {mb:.0f} |")
    print(f"\npeak RSS of the main process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
