"""Model families: training throughput (1 process and 2 under torchrun) and streaming step latency.

    python -m benchmarks.bench_models [--quick] [--families framewise,rnn,...] [--out benchmarks/RESULTS-models.md]

Setups (generated with `seqsense.scenarios`): `frames32` (tracking, 32×32 camera -> truth/position),
`frames64` (64×64, latency only) and `sensor` (imu_motion: raw gyro/accel/mag -> orientation).
Training: each SGD family runs `steps` optimizer steps with default widths (hidden 64), batch 16 and
a 16-tick window, one torch thread per process; windows/s counts the training loop only. Latency:
`predictor().step(tick)` (numpy in, numpy out, batch 1) timed per call after a warm-up; median and p99.
Targets: sensor-only models <= 200 µs, 64×64 frame models <= 2 ms a step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SETUPS = {  # name -> (scenario, knobs, duration_s)
    "frames32": ("tracking", {"image_size": 32}, 10.0),
    "frames64": ("tracking", {"image_size": 64}, 4.0),
    "sensor": ("imu_motion", {}, 10.0),
}
TRAIN_KNOBS = {"window": 16, "batch_size": 16, "val_every": 100000, "val_fraction": 0.2}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def make_logs(folder: Path, quick: bool) -> dict[str, Path]:
    """Generate one log per setup (8 episodes, or 4 with --quick)."""
    from seqsense.scenarios import generate

    return {
        name: generate(scn, folder / f"{name}.h5", episodes=4 if quick else 8, seed=0, duration_s=dur, knobs=knobs)
        for name, (scn, knobs, dur) in SETUPS.items()
    }


def train_rate(family: str, log: Path, out: Path, steps: int) -> dict:
    """Train `family` for `steps` in this process; windows/s, parameters and seconds."""
    from seqsense.train import train

    r = train(family, [log], {**TRAIN_KNOBS, "steps": steps}, out, progress=False, log=lambda m: None, device="cpu")
    return {"windows_per_s": r.windows_per_s, "params": r.num_parameters, "seconds": r.seconds, "steps": r.steps}


def train_rate_torchrun(family: str, log: Path, out: Path, steps: int, nproc: int = 2) -> dict:
    """The same under `torchrun --nproc_per_node nproc` (gloo, one thread per process)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "benchmarks.bench_models", "--worker", family, str(log), str(out), str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"torchrun worker failed:\n{proc.stderr[-2000:]}")


def step_latency(family: str, log: Path, n: int) -> dict:
    """Median and p99 of predictor().step over n ticks (cycling through episode 0), in µs."""
    from seqsense.dataset import WindowDataset, compute_normalization, episode_refs
    from seqsense.models import get_model_class
    from seqsense.train import build_config

    model_cls, _ = get_model_class(family)
    config = build_config(family, [log], {"window": 16})
    ds = WindowDataset(episode_refs([log])[:1], config.window_spec())
    streams = ds.stream_info()
    if {streams[s].kind for s in config.inputs} - set(model_cls.input_kinds):
        return {}
    pred = model_cls(config, streams, compute_normalization(ds)).eval().predictor()
    ticks = [t for _, t in zip(range(400), ds.iter_ticks(0))]
    pred.reset()
    for t in ticks[:50]:
        pred.step_tick(t)
    times = np.empty(n)
    for i in range(n):
        t = ticks[i % len(ticks)]
        t0 = time.perf_counter()
        pred.step_tick(t)
        times[i] = time.perf_counter() - t0
    return {"median_us": float(np.median(times) * 1e6), "p99_us": float(np.percentile(times, 99) * 1e6), "params": pred.model.num_parameters()}


def worker(argv: list[str]) -> None:
    """torchrun entry: train and print the result from rank 0."""
    torch.set_num_threads(1)
    family, log, out, steps = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3])
    res = train_rate(family, log, out, steps)
    if int(os.environ.get("RANK", 0)) == 0:
        print("RESULT " + json.dumps(res), flush=True)


def fmt(x, spec=".0f") -> str:
    return "-" if x is None else format(x, spec)


def report(rows_train: list, rows_step: list, args, seconds: float) -> str:
    """The markdown results page."""
    lines = [
        "# Model families: training throughput and streaming latency",
        "",
        f"Command: `python -m benchmarks.bench_models{' --quick' if args.quick else ''}`  ",
        f"Machine: {os.cpu_count()} CPU(s) (nproc), {cpu_model()}; torch {torch.__version__}; one torch thread per process  ",
        f"Date: {datetime.date.today().isoformat()}; total {seconds:.0f} s",
        "",
        "## Training (windows of 16 ticks per second, training loop only)",
        "",
        "| setup | family | params | 1 process | 2 processes (torchrun, gloo) | speed-up |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows_train:
        one, two = r.get("one"), r.get("two")
        up = two / one if one and two else None
        lines.append(f"| {r['setup']} | {r['family']} | {r['params']} | {fmt(one)} | {fmt(two)} | {fmt(up, '.2f')} |")
    lines += [
        "",
        "## Streaming `predictor().step` latency (batch 1, numpy in/out)",
        "",
        "| setup | family | params | median µs | p99 µs | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows_step:
        target = "≤ 2000 µs" if r["setup"].startswith("frames") else "≤ 200 µs"
        lines.append(f"| {r['setup']} | {r['family']} | {r['params']} | {fmt(r['median_us'])} | {fmt(r['p99_us'])} | {target} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    """Run every measurement and write the results page."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return worker(argv[1:])
    from seqsense.models import MODELS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and ticks (a smoke run)")
    p.add_argument("--families", default=",".join(sorted(MODELS)))
    p.add_argument("--no-torchrun", action="store_true", help="skip the 2-process measurements")
    p.add_argument("--out", default="benchmarks/RESULTS-models.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    steps, n_ticks = (20, 300) if args.quick else (100, 3000)
    families = args.families.split(",")
    rows_train, rows_step = [], []
    with tempfile.TemporaryDirectory() as tmp:
        logs = make_logs(Path(tmp), args.quick)
        for setup in ("frames32", "sensor"):
            for fam in families:
                try:
                    one = train_rate(fam, logs[setup], Path(tmp) / f"{fam}-{setup}-1", steps)
                except Exception as e:  # a family that cannot take this setup
                    print(f"skip training {fam} on {setup}: {e}", file=sys.stderr)
                    continue
                row = {"setup": setup, "family": fam, "params": one["params"], "one": one["windows_per_s"] or None}
                if not args.no_torchrun and one["steps"]:
                    row["two"] = train_rate_torchrun(fam, logs[setup], Path(tmp) / f"{fam}-{setup}-2", steps)["windows_per_s"]
                rows_train.append(row)
                print(row, file=sys.stderr)
        for setup in ("sensor", "frames64"):
            for fam in families:
                try:
                    r = step_latency(fam, logs[setup], n_ticks)
                except Exception as e:
                    print(f"skip latency {fam} on {setup}: {e}", file=sys.stderr)
                    continue
                if r:
                    rows_step.append({"setup": setup, "family": fam, **r})
                    print(rows_step[-1], file=sys.stderr)
    text = report(rows_train, rows_step, args, time.perf_counter() - t0)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
