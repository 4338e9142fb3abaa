"""Real IMU logs: import → derive → study → the VQF filter as reference, on the BROAD trials.

    python -m benchmarks.bench_imu_real [--data-dir ../shared/data/real] [--out bench_out/imu_real]

Each BROAD trial in `--data-dir` (`*_B.hdf5`; the benchmark skips cleanly when there are fewer than
two) is imported with `datasets/mappings/broad.json` (which also derives `truth/gravity_body`, the
gravity direction in the IMU frame, from the optical orientation) and cut into `--every`-second
episodes. Then, with CLI commands only:

- **by episode** (the main split): `seqsense study --data <all trials> --inputs imu --target
  truth/gravity_body`, which splits the pieces by episode with a fixed seed;
- **cross-trial** (a stress test: the trials are different regimes, 02 rotates slowly without
  translating, 16 translates fast without much rotation): `seqsense study --data A --test-data B`
  for each order.

Every model the study trained (each family and its memoryless twin) is scored from the study's saved
predictions, and the VQF filter (`vqf` on PyPI, online mode: causal, 6D, started fresh at each
episode like the models) on the same test episodes: the inclination error, RMS angle in degrees
between predicted and true gravity direction, over the ticks the trial marks as `movement`, pooled
over the test episodes. Prints one table and writes OUT/bench_imu_real.{md,json}. Takes minutes:
not part of CI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAPPING = ROOT / "datasets" / "mappings" / "broad.json"
TARGET = "truth/gravity_body"


def _default_data_dir() -> Path:
    return ROOT.parent / "shared" / "data" / "real"


def import_trial(src: Path, dest: Path, every_s: float) -> Path:
    """One BROAD trial as a seqsense log cut into `every_s`-second episodes (once)."""
    from seqsense.cli import main

    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        rc = main(["import", str(src), "--config", str(MAPPING), "--episode", f"every={every_s:g}", "--out", str(dest), "--no-progress"])
        if rc != 0:
            raise SystemExit(f"import of {src} failed (exit {rc})")
    return dest


LEARNED = ("framewise", "gp", "rnn", "transformer")  # the families a rotation augmentation applies to


def imu_model_settings(imu_rate_hz: float, fields: list[str], rotate: bool = False) -> list[str]:
    """`--model-set` items for a raw 6-D IMU stream `imu` whose `fields` name the axes (acc_*, gyr_*).

    ekf and kalmannet: which slice of `imu` is the gyro and which the accelerometer; kalmannet trains
    statefully on the IMU's own clock (it steps the EKF on the latest sample), 256-tick windows.
    rnn: `seqsense.train.stateful_imu_overrides` (a 50 Hz clock with the IMU packed, truncated BPTT
    over 64-tick windows with the state carried through each episode). With `rotate`, the learned
    families (and their twins) train on randomly rotated windows (`seqsense.augment`)."""
    import json

    from seqsense.train import stateful_imu_overrides

    def part(prefix: str) -> str:
        idx = [i for i, f in enumerate(fields) if f.startswith(prefix)]
        if len(idx) != 3 or idx != list(range(idx[0], idx[0] + 3)):
            raise SystemExit(f"bench_imu_real: the imu stream's fields {fields} hold no three consecutive {prefix}* axes.")
        return f"imu[{idx[0]}:{idx[0] + 3}]"

    streams = [f"{family}.{role}_stream={part(prefix)}" for family in ("ekf", "kalmannet") for role, prefix in (("gyro", "gyr"), ("accel", "acc"))]
    rnn = stateful_imu_overrides(["imu"], imu_rate_hz)
    items = [f"rnn.{k}={json.dumps(v) if isinstance(v, dict) else str(v).lower() if isinstance(v, bool) else v}" for k, v in rnn.items()]
    turned = [f"{family}.rotate_augment={part('acc')},{part('gyr')}" for family in LEARNED] if rotate else []
    return streams + items + ["kalmannet.stateful=true", "kalmannet.tbptt_window=256", "kalmannet.stateful_batch=8"] + turned


def run_study(out: Path, data: list[Path], test: list[Path], name: str, settings: list[str], jobs: int,
              model_settings: list[str] = ()) -> Path:
    """`seqsense study --data ...` into `out`; the cell's folder."""
    from seqsense.cli import main

    args = ["study", "--data", *map(str, data), "--inputs", "imu", "--target", TARGET, "--name", name,
            "--out", str(out), "--jobs", str(jobs), "--no-progress"]
    args += ["--test-data", *map(str, test)] if test else []
    for s in settings:
        args += ["--set", s]
    for s in model_settings:
        args += ["--model-set", s]
    rc = main(args)
    if rc not in (0, 1):
        raise SystemExit(f"seqsense study {' '.join(args)} failed (exit {rc})")
    return out / "cells" / name / "seed0"


def vqf_gravity(acc: np.ndarray, gyr: np.ndarray, rate_hz: float) -> np.ndarray:
    """Gravity direction in the IMU frame (N, 3) from VQF's online 6D orientation (sensor → earth, w first)."""
    from vqf import VQF

    from seqsense.derive import gravity_body

    out = VQF(1.0 / rate_hz).updateBatch(np.ascontiguousarray(gyr, np.float64), np.ascontiguousarray(acc, np.float64))
    return gravity_body(out["quat6D"])


def _movement_at(episode, t_ns: np.ndarray) -> np.ndarray:
    """The trial's `movement` label held at the tick times (True: scored)."""
    from seqsense.evaluate.saved import truth_at

    if not episode.has_stream("movement"):
        return np.ones(len(t_ns), bool)
    label, ok = truth_at(episode.stream("movement"), t_ns)
    return ok & (label == 1)


def _angles_deg(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    a = y_true / np.linalg.norm(y_true, axis=1, keepdims=True)
    b = y_pred / np.linalg.norm(y_pred, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.sum(a * b, axis=1), -1.0, 1.0)))


def score_cell(cell_dir: Path) -> dict[str, dict]:
    """{model: {"rms_deg", "per_episode": {episode: rms_deg}}} over the movement ticks of the test episodes, VQF included."""
    from seqsense.evaluate.saved import load_predictions
    from seqsense.log import open_log

    preds = load_predictions(cell_dir / "predictions.h5")
    test = open_log(cell_dir / "test.h5")
    sq: dict[str, list] = {}
    per: dict[str, dict] = {}

    def add(model: str, episode: str, angles: np.ndarray) -> None:
        angles = angles[np.isfinite(angles)]
        if angles.size:
            sq.setdefault(model, []).append(angles**2)
            per.setdefault(model, {})[episode] = float(np.sqrt(np.mean(angles**2)))

    done_vqf = set()
    for model, episodes in preds.items():
        for name, e in episodes.items():
            ep = test.episode(str(e["source_episode"]))
            keep = e["valid"] & _movement_at(ep, e["t_ns"])
            add(model, ep.name, _angles_deg(e["truth"][keep].astype(np.float64), e["mean"][keep].astype(np.float64)))
            if ep.name in done_vqf:
                continue
            done_vqf.add(ep.name)
            imu = ep.stream("imu")
            x = imu.data[()].astype(np.float64)
            g = vqf_gravity(x[:, :3], x[:, 3:6], imu.rate_hz)
            idx = np.clip(np.searchsorted(imu.t, e["t_ns"], side="right") - 1, 0, len(imu.t) - 1)  # latest sample at each tick
            add("vqf (reference)", ep.name, _angles_deg(e["truth"][keep].astype(np.float64), g[idx][keep]))
    test.close()
    return {m: {"rms_deg": float(np.sqrt(np.mean(np.concatenate(v)))), "per_episode": per[m]} for m, v in sq.items()}


def table(columns: dict[str, dict[str, dict]]) -> str:
    """Markdown: one row per model (twins beside their family), one column per split, plus twin ratios."""
    models = sorted({m for col in columns.values() for m in col}, key=lambda m: (m.startswith("vqf"), m.replace("-twin", "~"), m))
    head = "| model | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    rows = []
    for m in models:
        cells = []
        for col in columns.values():
            r = col.get(m, {}).get("rms_deg")
            cells.append("–" if r is None else f"{r:.2f}°")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    ratio_rows = []
    for m in models:
        twin = m + "-twin"
        if any(twin in col for col in columns.values()):
            cells = []
            for col in columns.values():
                a, b = col.get(m, {}).get("rms_deg"), col.get(twin, {}).get("rms_deg")
                cells.append("–" if a is None or b is None or b == 0 else f"{a / b:.2f}×")
            ratio_rows.append(f"| {m} / its twin | " + " | ".join(cells) + " |")
    return head + "\n".join(rows + ratio_rows) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=_default_data_dir())
    p.add_argument("--out", type=Path, default=ROOT / "bench_out" / "imu_real")
    p.add_argument("--every", type=float, default=30.0, help="episode length in seconds on import (default 30)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="study settings (seqsense study --set)")
    p.add_argument("--model-set", action="append", default=[], metavar="FAMILY.KEY=VALUE",
                   help="a family's setting (seqsense study --model-set), after the raw-IMU defaults (imu_model_settings)")
    p.add_argument("--no-imu-defaults", action="store_true", help="train every family as the study does by default")
    p.add_argument("--rotate-augment", action="store_true",
                   help=f"train {', '.join(LEARNED)} (and twins) on randomly rotated IMU windows (seqsense.augment)")
    p.add_argument("--jobs", type=int, default=0)
    p.add_argument("--no-cross", action="store_true", help="only the by-episode split")
    args = p.parse_args(argv)
    trials = sorted(args.data_dir.glob("*_B.hdf5")) if args.data_dir.is_dir() else []
    if len(trials) < 2:
        print(f"bench_imu_real: skipped: fewer than two BROAD trials (*_B.hdf5) in {args.data_dir}.")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    logs = [import_trial(t, args.out / "logs" / f"{t.stem}.h5", args.every) for t in trials]
    jobs = args.jobs or 2
    from seqsense.log import open_log

    log = open_log(logs[0])
    imu = log.episodes()[0].stream("imu")
    imu_rate, fields = imu.rate_hz, list(imu.fields or [])
    log.close()
    model_settings = ([] if args.no_imu_defaults else imu_model_settings(imu_rate, fields, args.rotate_augment)) + args.model_set
    columns = {"by episode": score_cell(run_study(args.out / "by_episode", logs, [], "broad", args.set, jobs, model_settings))}
    if not args.no_cross:
        for a, b in ((logs[1], logs[0]), (logs[0], logs[1])):
            key = f"train {a.stem[:2]} → test {b.stem[:2]}"
            columns[key] = score_cell(run_study(args.out / f"train_{a.stem[:2]}_test_{b.stem[:2]}", [a], [b], "broad", args.set, jobs,
                                                model_settings))
    md = table(columns)
    print(md)
    (args.out / "bench_imu_real.md").write_text(md)
    from seqsense.fileio import write_json_atomic

    write_json_atomic(args.out / "bench_imu_real.json", {"trials": [str(t) for t in trials], "every_s": args.every,
                                                          "settings": args.set, "model_settings": model_settings,
                                                          "columns": columns})
    return 0


if __name__ == "__main__":
    sys.exit(main())
