"""Scenario generation speed: camera frames per second written through the log writer, on one core.

    python -m benchmarks.bench_generate [--episodes 8] [--duration-s 20] [--repeat 3]

Each case generates a whole log with `seqsense.scenarios.generate` (simulation, rendering, noise,
HDF5 writing, atomic rename) into a temporary folder, after one warm-up run. Reported: the best of
`--repeat` runs, as wall-clock frames/s and as CPU frames/s (process time, which is robust to other
load on a shared machine). Numeric libraries are held to one thread. Sensor-only scenarios report
IMU samples/s instead of frames/s.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from seqsense.log import open_log  # noqa: E402
from seqsense.scenarios import generate  # noqa: E402

# (label, scenario, knobs, counted stream)
CASES = [
    ("tracking 64x64 (defaults: pixel_noise 0.02)", "tracking", {}, "camera"),
    ("tracking 64x64, pixel_noise 0", "tracking", {"pixel_noise": 0.0}, "camera"),
    ("tracking 32x32 (defaults)", "tracking", {"image_size": 32}, "camera"),
    ("tracking 64x64, blur 0.5 + occlusion 0.3 + 2 distractors + drops 0.2", "tracking",
     {"motion_blur": 0.5, "occlusion": 0.3, "distractors": 2, "drop_prob": 0.2}, "camera"),
    ("slideshow 64x64", "slideshow", {}, "camera"),
    ("multirate 64x64 (camera 15 Hz + IMU 200 Hz)", "multirate", {}, "camera"),
    ("linear_gaussian frames 64x64", "linear_gaussian", {"frames": True}, "camera"),
    ("imu_motion 200 Hz (IMU samples/s)", "imu_motion", {}, "gyro"),
]


def count(path: Path, stream: str) -> int:
    """Samples of `stream` over all episodes of the log."""
    log = open_log(path)
    n = sum(len(ep.stream(stream)) for ep in log.episodes())
    log.close()
    return n


def measure(scenario: str, knobs: dict, stream: str, episodes: int, duration_s: float, repeat: int, folder: Path) -> dict:
    """Best-of-`repeat` wall and CPU rates of generating one log."""
    out = folder / f"{scenario}.h5"
    generate(scenario, out, episodes=1, duration_s=min(duration_s, 2.0), knobs=knobs)  # warm-up
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        generate(scenario, out, episodes=episodes, duration_s=duration_s, knobs=knobs)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    n = count(out, stream)
    return {"samples": n, "wall_per_s": n / best_wall, "cpu_per_s": n / best_cpu, "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> None:
    """Run every case and print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    print(f"{args.episodes} episodes x {args.duration_s:g} s per log, best of {args.repeat}\n")
    print("| case | samples | wall samples/s | CPU samples/s | MB written |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, scenario, knobs, stream in CASES:
            r = measure(scenario, knobs, stream, args.episodes, args.duration_s, args.repeat, Path(tmp))
            print(f"| {label} | {r['samples']} | {r['wall_per_s']:,.0f} | {r['cpu_per_s']:,.0f} | {r['bytes'] / 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
