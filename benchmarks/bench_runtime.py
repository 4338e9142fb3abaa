"""Step latency of exported predictors in `seqsense.runtime` (onnxruntime, 1 thread) next to torch.

For every registered family, two models at the family's default size (hidden 64): sensor-only (one
6-D IMU-like vector in, 3-D target out) and frames (64×64×3 uint8 camera + the vector in). Each is
exported, then the runtime predictor (`step(t_ns, observations)`, input checks included), the torch
predictor in eager mode and the torch predictor with `compile=True` (`TorchPredictor.step`,
torch.set_num_threads(1), inference mode) step through the same random-but-valid ticks; the time per
step is reported as median and p99, with the bare `InferenceSession.run` time beside the runtime's
to show the Python overhead. Targets: runtime sensor-only <= 50 µs and 64×64 frames <= 1 ms; torch
sensor-only <= 200 µs and frames <= 2 ms. Models are untrained (latency does not depend on the
weights). `--no-compile` skips the compiled column (it needs a C++ compiler).

    python -m benchmarks.bench_runtime [--steps 3000] [--frame-steps 1000] [--families rnn,gp]
"""

from __future__ import annotations

import argparse
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
from seqsense.export import export_model
from seqsense.export.check import random_ticks
from seqsense.models import MODELS

TARGETS_US = {"sensor": 50.0, "frames": 1000.0}
TORCH_TARGETS_US = {"sensor": 200.0, "frames": 2000.0}


def build(family: str, setup: str):
    """An untrained default-size model of `family` on the sensor-only or frames setup."""
    model_cls, config_cls = MODELS[family]
    inputs = ("imu",) if setup == "sensor" else ("camera", "imu")
    streams = {"imu": StreamInfo("vector", (6,), "", rate_hz=100.0), "camera": StreamInfo("image", (64, 64, 3), "", rate_hz=30.0),
               "truth/pos": StreamInfo("vector", (3,), "m", rate_hz=30.0)}
    extra = {"dynamics": "cv"} if family == "kalman" else {}
    config = config_cls(inputs=inputs, target="truth/pos", **extra)
    torch.manual_seed(0)
    return model_cls(config, {k: v for k, v in streams.items() if k in (*inputs, "truth/pos")}, {}).eval()


def _times_us(fn, ticks, warmup: int, reset=lambda: None) -> np.ndarray:
    """Per-call time of fn(tick) in µs over `ticks`, after `warmup` untimed calls and a reset."""
    for t in ticks[:warmup]:
        fn(t)
    reset()
    out = np.empty(len(ticks))
    for i, t in enumerate(ticks):
        t0 = time.perf_counter_ns()
        fn(t)
        out[i] = (time.perf_counter_ns() - t0) / 1e3
    return out


def bench(family: str, setup: str, steps: int, workdir: Path, compiled: bool = True) -> dict:
    """Median/p99 step time (µs) of runtime, bare session.run, torch eager and torch compiled for one model."""
    model = build(family, setup)
    folder = workdir / f"{family}_{setup}"
    export_model(model, folder, parity_ticks=20, log=lambda m: None)
    ticks = [t for ep in random_ticks(model, steps, seed=0, episodes=1) for t in ep]
    pred = runtime.load(folder, threads=1)
    rt = _times_us(pred.step_tick, ticks, warmup=min(200, steps), reset=pred.reset)
    pred.reset()
    pred.step_tick(ticks[0])
    feed = {**pred.feed, **pred.state}
    names = pred.output_names
    bare = _times_us(lambda t: pred.session.run(names, feed), ticks, warmup=min(200, steps))
    tp = model.predictor()
    eager = _times_us(tp.step, ticks, warmup=min(200, steps), reset=tp.reset)
    q = lambda a: (float(np.median(a)), float(np.percentile(a, 99)))  # noqa: E731
    comp = (float("nan"), float("nan"))
    if compiled:
        tc = model.predictor(compile=True)
        comp = q(_times_us(tc.step, ticks, warmup=min(200, steps), reset=tc.reset))
    return {"family": family, "setup": setup, "params": model.num_parameters(), "runtime": q(rt), "session_run": q(bare),
            "torch": q(eager), "torch_compiled": comp, "target_us": TARGETS_US[setup], "torch_target_us": TORCH_TARGETS_US[setup],
            "steps": steps}


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

    print(f"date {datetime.date.today()}, nproc {os.cpu_count()}, CPU {cpu_model()}, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, python {platform.python_version()}\n")
    print("| family | inputs | params | runtime step median µs | runtime p99 µs | session.run median µs | runtime target µs | met "
          "| torch eager median µs | eager p99 µs | torch compiled median µs | compiled p99 µs | torch target µs | eager met | compiled met |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for setup in ("sensor", "frames"):
            for family in args.families.split(","):
                r = bench(family, setup, args.steps if setup == "sensor" else args.frame_steps, Path(tmp), not args.no_compile)
                label = "6-D vector" if setup == "sensor" else "64×64×3 frame + 6-D vector"
                met = lambda us, target: "–" if us != us else ("yes" if us <= target else "**no**")  # noqa: E731
                print(f"| {family} | {label} | {r['params']} | {r['runtime'][0]:.0f} | {r['runtime'][1]:.0f} | "
                      f"{r['session_run'][0]:.0f} | {r['target_us']:.0f} | {met(r['runtime'][0], r['target_us'])} | "
                      f"{r['torch'][0]:.0f} | {r['torch'][1]:.0f} | {r['torch_compiled'][0]:.0f} | {r['torch_compiled'][1]:.0f} | "
                      f"{r['torch_target_us']:.0f} | {met(r['torch'][0], r['torch_target_us'])} | "
                      f"{met(r['torch_compiled'][0], r['torch_target_us'])} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
