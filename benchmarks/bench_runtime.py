"""Step latency of exported predictors in `seqsense.runtime` (onnxruntime, 1 thread) next to torch.

For every registered family, two models at the family's default size (hidden 64): sensor-only (one
6-D IMU-like vector in, 3-D target out) and frames (64×64×3 uint8 camera + the vector in). Each is
exported, then every predictor steps through the same raw observation sequence under the robot-facing
contract, `reset()` then `step(t_ns, observations)` (samples with their stamps, some missing): the
runtime predictor (tick building, input checks, IO-bound `session.run`, state carry), the torch
predictor in eager mode and with `compile=True` (torch.set_num_threads(1), inference mode). Right
after each runtime step the bare `InferenceSession.run` is timed on the same feed (a dict of the same
arrays), interleaved so both see the same machine load; "overhead %" is (step − bare run) / step,
the share of the step spent in Python around the graph (negative where IO binding saves more than the
tick building costs). Targets: runtime sensor-only <= 50 µs, 64×64 frames <= 1 ms, overhead <= 20 %;
torch sensor-only <= 200 µs and frames <= 2 ms. Models are untrained (latency does not depend on the
weights). `--no-compile` skips the compiled column (it needs a C++ compiler).

    python -m benchmarks.bench_runtime [--steps 3000] [--frame-steps 1000] [--families rnn,gp] [--no-compile]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from seqsense import runtime
from seqsense.dataset import StreamInfo
from seqsense.errors import SeqsenseError
from seqsense.export import export_model
from seqsense.models import MODELS

TARGETS_US = {"sensor": 50.0, "frames": 1000.0}
TORCH_TARGETS_US = {"sensor": 200.0, "frames": 2000.0}
OVERHEAD_TARGET = 0.20
PERIOD_NS = 10_000_000  # 100 Hz clock
KNOBS = {"kalman": {"dynamics": "cv"}}
IMU_SPLIT = {"gyro_stream": "imu[0:3]", "accel_stream": "imu[3:6]"}  # the gravity filters read the 6-D vector as gyro + accel


def build(family: str, setup: str):
    """An untrained default-size model of `family` on the sensor-only or frames setup (None if the family refuses it)."""
    model_cls, config_cls = MODELS[family]
    inputs = ("imu",) if setup == "sensor" else ("camera", "imu")
    streams = {"imu": StreamInfo("vector", (6,), "", rate_hz=100.0), "camera": StreamInfo("image", (64, 64, 3), "", rate_hz=30.0),
               "truth/pos": StreamInfo("vector", (3,), "m", rate_hz=30.0)}
    fields = {f.name for f in dataclasses.fields(config_cls)}
    extra = {k: v for k, v in {**IMU_SPLIT, **KNOBS.get(family, {})}.items() if k in fields}
    torch.manual_seed(0)
    try:
        config = config_cls(inputs=inputs, target="truth/pos", **extra)
        return model_cls(config, {k: v for k, v in streams.items() if k in (*inputs, "truth/pos")}, {}).eval()
    except SeqsenseError:
        return None


def observations(model, n: int, seed: int = 0) -> list[tuple[int, dict]]:
    """`n` ticks of raw observations at 100 Hz: each stream's sample (10 % missing) with its stamp a few ms back."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = 10**9 + i * PERIOD_NS
        obs = {}
        for s in model.config.inputs:
            info = model.streams[s]
            if rng.random() < 0.1:
                obs[s] = None
                continue
            if info.kind == "image":
                obs[s] = rng.integers(0, 256, info.shape, dtype=np.uint8)
            else:
                obs[s] = rng.standard_normal(info.shape).astype(np.float32)
            obs[f"{s}_t_ns"] = t - int(rng.integers(0, PERIOD_NS // 2))
        out.append((t, obs))
    return out


def _times_us(pred, seq, warmup: int) -> np.ndarray:
    """Per-step time of pred.step in µs over `seq`, after `warmup` untimed steps and a reset."""
    for t, obs in seq[:warmup]:
        pred.step(t, obs)
    pred.reset()
    out = np.empty(len(seq))
    clock = time.perf_counter_ns
    for i, (t, obs) in enumerate(seq):
        t0 = clock()
        pred.step(t, obs)
        out[i] = (clock() - t0) / 1e3
    return out


def _runtime_and_bare_us(pred, seq, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step µs of the runtime step and, right after each, of a bare session.run on the same feed."""
    for t, obs in seq[:warmup]:
        pred.step(t, obs)
    pred.reset()
    run, names = pred.session.run, pred.output_names
    step, bare = np.empty(len(seq)), np.empty(len(seq))
    clock = time.perf_counter_ns
    for i, (t, obs) in enumerate(seq):
        t0 = clock()
        pred.step(t, obs)
        t1 = clock()
        feed = pred.feed  # the arrays the next step reads (built outside the timed call)
        t2 = clock()
        run(names, feed)
        t3 = clock()
        step[i], bare[i] = (t1 - t0) / 1e3, (t3 - t2) / 1e3
    return step, bare


def bench(family: str, setup: str, steps: int, workdir: Path, compiled: bool = True) -> dict | None:
    """Median/p99 step time (µs) of runtime, bare session.run, torch eager and torch compiled for one model."""
    model = build(family, setup)
    if model is None:
        return None
    folder = workdir / f"{family}_{setup}"
    export_model(model, folder, parity_ticks=20, log=lambda m: None)
    seq = observations(model, steps)
    warmup = min(200, steps)
    pred = runtime.load(folder, threads=1)
    rt, bare = _runtime_and_bare_us(pred, seq, warmup)
    eager = _times_us(model.predictor(), seq, warmup)
    q = lambda a: (float(np.median(a)), float(np.percentile(a, 99)))  # noqa: E731
    comp = (float("nan"), float("nan"))
    if compiled:
        comp = q(_times_us(model.predictor(compile=True), seq, warmup))
    r, b = q(rt), q(bare)
    return {"family": family, "setup": setup, "params": model.num_parameters(), "runtime": r, "session_run": b,
            "overhead": (r[0] - b[0]) / r[0], "torch": q(eager), "torch_compiled": comp, "target_us": TARGETS_US[setup],
            "torch_target_us": TORCH_TARGETS_US[setup], "steps": steps}


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000, help="steps timed per sensor-only model")
    ap.add_argument("--frame-steps", type=int, default=1000, help="steps timed per frame model")
    ap.add_argument("--families", default=",".join(sorted(MODELS)))
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import onnxruntime

    print(f"date {datetime.date.today()}, nproc {os.cpu_count()}, CPU {cpu_model()}, load average {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, python {platform.python_version()}\n")
    print("| family | inputs | params | runtime step median µs | runtime p99 µs | session.run median µs | overhead % "
          "| runtime target µs | met | torch eager median µs | eager p99 µs | torch compiled median µs | compiled p99 µs "
          "| torch target µs | eager met | compiled met |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|")
    met = lambda us, target: "–" if us != us else ("yes" if us <= target else "**no**")  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        for setup in ("sensor", "frames"):
            for family in args.families.split(","):
                r = bench(family, setup, args.steps if setup == "sensor" else args.frame_steps, Path(tmp), not args.no_compile)
                if r is None:
                    continue  # e.g. the gravity filters read no frames
                label = "6-D vector" if setup == "sensor" else "64×64×3 frame + 6-D vector"
                ok = r["runtime"][0] <= r["target_us"] and r["overhead"] <= OVERHEAD_TARGET
                print(f"| {family} | {label} | {r['params']} | {r['runtime'][0]:.0f} | {r['runtime'][1]:.0f} | "
                      f"{r['session_run'][0]:.0f} | {100 * r['overhead']:.0f} | {r['target_us']:.0f} | {'yes' if ok else '**no**'} | "
                      f"{r['torch'][0]:.0f} | {r['torch'][1]:.0f} | {r['torch_compiled'][0]:.0f} | {r['torch_compiled'][1]:.0f} | "
                      f"{r['torch_target_us']:.0f} | {met(r['torch'][0], r['torch_target_us'])} | "
                      f"{met(r['torch_compiled'][0], r['torch_target_us'])} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
