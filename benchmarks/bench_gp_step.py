"""Streaming GP cost per step: the state-space filter stays flat with history; gpytorch's dense GP grows.

    python -m benchmarks.bench_gp_step [--quick] [--nu 1.5]

(a) `GPModel.step` (encoder + Matérn state-space update, 1-D vector input, B=1) and the bare
state-space recursion (discretize + predict + update) timed per step after 1,000 and after 100,000
steps of history (10,000 with --quick); (b) gpytorch's ExactGP with ScaleKernel(MaternKernel) at
n = 500 and 2,000 points: one new observation through `get_fantasy_model` plus the predictive at the
next time, and the dense posterior recomputed from scratch, with gpytorch's default settings.
Prints a markdown table (median and p99 in µs) with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import gpytorch
import numpy as np
import torch

from seqsense.dataset import StreamInfo
from seqsense.models import statespace as ss
from seqsense.models.gp import DenseMaternGP, GPConfig, GPModel


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def stats_us(samples_ns: list[int]) -> tuple[float, float]:
    """(median, p99) in microseconds."""
    a = np.asarray(samples_ns, np.float64) / 1e3
    return float(np.median(a)), float(np.percentile(a, 99))


def make_tick(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One tick of a 1-D vector input with an irregular dt."""
    return {
        "x": torch.tensor([[rng.standard_normal()]], dtype=torch.float32),
        "x_age_s": torch.zeros(1),
        "x_valid": torch.ones(1, dtype=torch.bool),
        "dt_s": torch.tensor([rng.uniform(0.02, 0.08)], dtype=torch.float32),
    }


def bench_state_space(nu: float, checkpoints: list[int], timed: int = 2000) -> dict[tuple[str, int], tuple[float, float]]:
    """Per-step latency of the model step and of the bare recursion after each checkpoint of history."""
    streams = {"x": StreamInfo("vector", (1,)), "y": StreamInfo("vector", (1,))}
    model = GPModel(GPConfig(inputs=("x",), target="y", hidden=16, nu=nu, lengthscale_s=1.0), streams, {}).eval()  # built as users build it
    with torch.inference_mode():
        return _timed_steps(model, checkpoints, timed)


def _timed_steps(model, checkpoints: list[int], timed: int) -> dict[tuple[str, int], tuple[float, float]]:
    rng = np.random.default_rng(0)
    ticks = [make_tick(rng) for _ in range(256)]
    out = {}
    state = model.init_state(1)
    for tick in ticks:  # warm-up on a throwaway state
        _, state = model.step(tick, state)
    state = model.init_state(1)
    F, Pinf = model.prior.sde()
    m, P = state["m"], state["P"]
    r = torch.full((1, 1), 0.1, dtype=torch.float64)
    done = 0
    for target in checkpoints:
        while done < target - timed:  # build up history
            _, state = model.step(ticks[done % 256], state)
            A, Q = ss.discretize_stationary(F, Pinf, ticks[done % 256]["dt_s"])
            m, P = ss.predict(m, P, A, Q)
            m, P, _ = ss.update_first(m, P, ticks[done % 256]["x"].double(), r)
            done += 1
        t_model, t_bare = [], []
        for _ in range(timed):
            tick = ticks[done % 256]
            t0 = time.perf_counter_ns()
            _, state = model.step(tick, state)
            t1 = time.perf_counter_ns()
            A, Q = ss.discretize_stationary(F, Pinf, tick["dt_s"])
            m, P = ss.predict(m, P, A, Q)
            m, P, _ = ss.update_first(m, P, tick["x"].double(), r)
            t2 = time.perf_counter_ns()
            t_model.append(t1 - t0)
            t_bare.append(t2 - t1)
            done += 1
        out[("GPModel.step", target)] = stats_us(t_model)
        out[("state-space recursion", target)] = stats_us(t_bare)
    return out


@torch.no_grad()
def bench_gpytorch(nu: float, n: int, repeats: int = 20) -> dict[str, tuple[float, float]]:
    """Per-step cost at n points: fantasy update + predictive, and the dense posterior from scratch."""
    rng = np.random.default_rng(1)
    t = torch.tensor(np.cumsum(rng.uniform(0.02, 0.08, n + 1)), dtype=torch.float32)
    y = torch.sin(t) + 0.1 * torch.randn(n + 1)
    lik = gpytorch.likelihoods.GaussianLikelihood()
    model = DenseMaternGP(t[:n, None], y[:n], lik, nu).eval()
    model(t[n:, None])  # build the prediction caches once
    fantasy, dense = [], []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fm = model.get_fantasy_model(t[n - 1 : n, None] + 1e-3, y[n - 1 : n])
        post = fm(t[n:, None])
        post.mean, post.variance
        t1 = time.perf_counter_ns()
        model.set_train_data(t[:n, None], y[:n], strict=False)  # drops the caches
        post = model(t[n:, None])
        post.mean, post.variance
        t2 = time.perf_counter_ns()
        fantasy.append(t1 - t0)
        dense.append(t2 - t1)
    return {"get_fantasy_model + predict": stats_us(fantasy), "dense posterior from scratch": stats_us(dense)}


def main(argv=None) -> None:
    """Run both benchmarks and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10,000 instead of 100,000 steps of history")
    ap.add_argument("--nu", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    long = 10_000 if args.quick else 100_000
    print(f"machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; torch {torch.__version__} ({args.threads} thread(s)), "
          f"gpytorch {gpytorch.__version__}; {datetime.date.today().isoformat()}; nu={args.nu}\n")
    print("| what | history | median µs | p99 µs |\n|---|---|---|---|")
    for (name, hist), (med, p99) in bench_state_space(args.nu, [1_000, long]).items():
        print(f"| {name} | {hist:,} steps | {med:.1f} | {p99:.1f} |")
    for n in (500, 2_000):
        for name, (med, p99) in bench_gpytorch(args.nu, n).items():
            print(f"| gpytorch {name} | n = {n:,} | {med:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
