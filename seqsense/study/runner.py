"""The study: when does a machine consumer need temporal consistency, and which family pays off?

For every cell of a recipe (`datasets/recipes/*.json`: a scenario with knob values) and every seed,
the study generates a training log and a held-out test log once, trains one per-tick encoder (a
framewise model) that every family starts from, so frames are learned once, then trains every
family, framewise included, on the same further budget (optimizer steps and seconds). It replays the
test episodes through each trained predictor (and the framewise model behind an exponential smoother,
the cheapest temporal model, to show the jitter/lag trade-off), and scores metrics and the machine
consumers. It then computes, per cell and consumer, the relative cost gap between the best
memoryless and the best temporal model with a bootstrap CI over episodes and seeds, the rank agreement
between RMSE and consumer cost, and the verdicts on the claims (`seqsense.claims`), and writes
`results.json` plus the report (`index.html`, `summary.md`).

Every finished unit (a generated log, a trained run, a cell's evaluation) is written atomically and
found again on the next run, so an interrupted study resumes where it stopped and loses no finished
cell.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import time
import traceback
from pathlib import Path

import numpy as np

from seqsense import __version__
from seqsense.errors import ConfigError, SeqsenseError
from seqsense.evaluate.offline import check_writable
from seqsense.fileio import write_atomic
from seqsense.evaluate.verdict import INCONCLUSIVE
from seqsense.log.format import NS_PER_S

FAMILIES = ("framewise", "gp", "rnn", "transformer", "kalman")
MIN_R2 = 0.5  # below this best R² on the test episodes a cell's verdicts are inconclusive
SMOOTH_TAU_S = 0.1


@dataclasses.dataclass
class StudyConfig:
    """What to sweep and how much each family may train."""

    recipe: str = "quick"
    seeds: tuple[int, ...] = (0,)
    families: tuple[str, ...] = FAMILIES
    steps: int = 300  # optimizer steps per family and cell (equal budget)
    time_budget_s: float = 10.0  # and at most this many seconds of training per family and cell
    batch_size: int = 16
    window: int = 16
    hidden: int = 32
    test_episodes: int = 6
    n_boot: int = 2000
    margin: float = 0.05
    shared_encoder: bool = True  # train one per-tick encoder per cell first; every family starts from it

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        self.families = tuple(self.families)
        if not self.seeds:
            raise ConfigError("StudyConfig: at least one seed is needed.")
        if self.steps < 1 or self.test_episodes < 2 or self.batch_size < 1 or self.window < 1:
            raise ConfigError("StudyConfig: steps, batch_size, window must be >= 1 and test_episodes >= 2.")

    @classmethod
    def quick(cls) -> "StudyConfig":
        return cls()

    @classmethod
    def full(cls) -> "StudyConfig":
        return cls(recipe="full", seeds=(0, 1, 2), steps=600, time_budget_s=60.0, batch_size=32, window=32, hidden=64, test_episodes=10)


def _json_safe(x):
    """NaN/inf -> None, numpy -> python, recursively (results.json is strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_json_atomic(path: Path, data) -> None:
    """Strict JSON (NaN as null) through a temporary file and a rename."""
    write_atomic(path, json.dumps(_json_safe(data), indent=1))


def _packed_inputs(cell: dict, log_path: Path) -> dict:
    """Pack input streams running much faster than the clock (the target's rate) K samples a tick."""
    from seqsense.log import open_log

    ep = open_log(log_path).episodes()[0]
    clock_rate = ep.stream(cell["target"]).rate_hz
    packed = {}
    for s in cell["inputs"]:
        rate = ep.stream(s).rate_hz
        if math.isfinite(rate) and math.isfinite(clock_rate) and rate > 1.5 * clock_rate:
            packed[s] = int(math.ceil(rate / clock_rate)) + 1
    return packed


class Study:
    """Runs the cells of a recipe into an output folder, resuming finished units."""

    def __init__(self, config: StudyConfig, out_dir: str | os.PathLike, progress: bool = True, log=print, jobs: int = 1):
        from seqsense.models import MODELS, get_model_class
        from seqsense.scenarios import load_recipe

        self.config = config
        self.out = check_writable(out_dir)
        self.cells = load_recipe(config.recipe)
        for f in config.families:
            get_model_class(f)  # ConfigError listing valid names
        self.memoryless = [f for f in config.families if MODELS[f][0].memoryless]
        if not self.memoryless or len(self.memoryless) == len(config.families):
            raise ConfigError("The study needs at least one memoryless family (framewise) and one temporal family.")
        self.progress = progress
        self.log = log
        self.jobs = jobs

    # ---- units of work ---------------------------------------------------------------------------
    def cell_dir(self, cell: dict, seed: int) -> Path:
        d = self.out / "cells" / cell["name"] / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def logs(self, cell: dict, seed: int) -> tuple[Path, Path]:
        """(train log, test log) of a cell and seed, generated once."""
        from seqsense.scenarios import generate

        d = self.cell_dir(cell, seed)
        base = int(cell.get("seed", 0)) + 1000 * seed
        paths = []
        for split, episodes, s in (("train", cell["episodes"], base), ("test", self.config.test_episodes, base + 500)):
            path = d / f"{split}.h5"
            if not path.exists():
                generate(cell["scenario"], path, episodes=episodes, seed=s, duration_s=cell["duration_s"], knobs=cell["knobs"])
            paths.append(path)
        return paths[0], paths[1]

    def trained(self, cell: dict, seed: int, family: str, train_log: Path, init_encoder: Path | None = None):
        """The trained model of a family for a cell and seed, trained now or loaded from a finished run.

        `family` "encoder" is the shared stage: a framewise model whose encoder every family starts from.
        """
        from seqsense.models.checkpoint import load_checkpoint
        from seqsense.train import train

        run_dir = self.cell_dir(cell, seed) / "runs" / family
        done = run_dir / "train_summary.json"
        if done.exists():
            return load_checkpoint(run_dir), json.loads(done.read_text())
        c = self.config
        overrides = {
            "steps": c.steps,
            "time_budget_s": c.time_budget_s,
            "batch_size": c.batch_size,
            "window": c.window,
            "hidden": c.hidden,
            "val_every": max(1, c.steps // 3),
            "seed": seed,
            "packed": _packed_inputs(cell, train_log),
        }
        res = train(
            "framewise" if family == "encoder" else family,
            [train_log],
            overrides,
            run_dir,
            inputs=cell["inputs"],
            target=cell["target"],
            progress=False,
            log=lambda *_: None,
            init_encoder=init_encoder,
        )
        summary = {
            "num_parameters": res.num_parameters,
            "train_steps": res.steps,
            "train_seconds": res.seconds,
            "windows_per_s": res.windows_per_s,
            "train_loss": res.train_loss,
            "val_loss": res.val_loss,
        }
        write_json_atomic(done, summary)
        return res.model, summary

    def evaluate_cell(self, cell: dict, seed: int, bar=None) -> dict:
        """Train every family on one cell and seed, replay the test log, and save the rows (resumable)."""
        from seqsense.dataset import WindowDataset, episode_refs
        from seqsense.evaluate.replay import evaluate_predictor
        from seqsense.evaluate.wrappers import ExponentialSmoothing

        path = self.cell_dir(cell, seed) / "eval.json"
        if path.exists():
            if bar is not None:
                bar.update(self._units_per_cell())
            return json.loads(path.read_text())
        t0 = time.perf_counter()
        train_log, test_log = self.logs(cell, seed)
        if bar is not None:
            bar.update(1)
        refs = episode_refs([test_log])
        models, rows, examples = {}, [], {}
        shared, shared_summary = None, None
        if self.config.shared_encoder:
            if bar is not None:
                bar.set_postfix_str(f"{cell['name']} seed {seed}: shared encoder")
            _, shared_summary = self.trained(cell, seed, "encoder", train_log)
            shared = self.cell_dir(cell, seed) / "runs" / "encoder"
            if bar is not None:
                bar.update(1)
        for family in self.config.families:
            if bar is not None:
                bar.set_postfix_str(f"{cell['name']} seed {seed}: {family}")
            model, summary = self.trained(cell, seed, family, train_log, init_encoder=shared)
            if shared_summary:
                summary = {**summary, "encoder_steps": shared_summary["train_steps"], "encoder_seconds": shared_summary["train_seconds"]}
            models[family] = {"family": family, "wrapper": None, **summary}
            variants = [(family, model.predictor())]
            if family in self.memoryless:
                variants.append((f"{family}+ema", ExponentialSmoothing(model.predictor(), tau_s=SMOOTH_TAU_S)))
                models[f"{family}+ema"] = {"family": family, "wrapper": f"ema(tau_s={SMOOTH_TAU_S})", **summary}
            dataset = WindowDataset(refs, model.config.window_spec(window=1))
            for label, predictor in variants:
                ep_rows, replays = evaluate_predictor(predictor, dataset, keep_replays=1)
                for r in ep_rows:
                    r.update(model=label, seed=seed)
                rows += ep_rows
                examples[label] = replays[0]
            if bar is not None:
                bar.update(1)
        truth = [w["target"][w["target_valid"]] for w in (dataset.sequence(k) for k in range(len(refs)))]
        result = {
            "cell": cell["name"],
            "seed": seed,
            "target_var": float(np.var(np.concatenate(truth), axis=0).mean()) if truth and truth[0].ndim == 2 else None,
            "target_fields": dataset.index(0).streams[cell["target"]].fields,
            "seconds": time.perf_counter() - t0,
            "models": models,
            "rows": rows,
            "example": self._example(examples, dataset),
        }
        write_json_atomic(path, result)
        return json.loads(path.read_text())

    def _example(self, replays: dict, dataset) -> dict:
        """Truth and every model's predictions over the first test episode, for the trajectory plot."""
        first = next(iter(replays.values()))
        episode = dataset.index(0).episode
        t = first.t_s
        occluded = cuts = None
        if episode.has_stream("truth/occluded"):
            st = episode.stream("truth/occluded")
            i = np.clip(np.searchsorted(st.t / NS_PER_S, t, side="right") - 1, 0, None)
            occluded = st.data[()][i].astype(int)
        if episode.has_stream("truth/cut"):
            cuts = episode.stream("truth/cut").t / NS_PER_S
        y = first.y_true.reshape(len(t), -1)
        return {
            "episode": first.episode,
            "t_s": t,
            "truth": np.where(first.valid[:, None], y, np.nan),
            "occluded": occluded,
            "cuts_s": cuts,
            "predictions": {k: np.asarray(r.mean).reshape(len(t), -1) for k, r in replays.items()},
        }

    # ---- the whole sweep -----------------------------------------------------------------------
    def run(self) -> dict:
        """Run (or resume) every cell and seed, aggregate, write results.json and the report."""
        from tqdm import tqdm

        t0 = time.perf_counter()
        c = self.config
        units = len(self.cells) * len(c.seeds) * self._units_per_cell()
        bar = tqdm(total=units, desc=f"study {c.recipe}", unit="step", disable=not self.progress)
        per_cell: dict[str, list[dict]] = {}
        errors: dict[str, str] = {}
        work = [(cell, seed) for cell in self.cells for seed in c.seeds]
        if self.jobs > 1 and len(work) > 1:
            outcomes = self._run_parallel(work, bar)
        else:
            outcomes = (self._run_unit(cell, seed, bar) for cell, seed in work)
        for (cell, seed), (result, error) in zip(work, outcomes):
            if error:
                errors[cell["name"]] = error
                self.log(f"cell {cell['name']} seed {seed} failed: {error}")
            else:
                per_cell.setdefault(cell["name"], []).append(result)
        bar.close()
        results = self.aggregate(per_cell, errors, time.perf_counter() - t0)
        write_json_atomic(self.out / "results.json", results)
        from seqsense.report import write_report

        write_report(json.loads((self.out / "results.json").read_text()), self.out)
        return results

    def _units_per_cell(self) -> int:
        """Progress units of one cell and seed: data, the shared encoder, each family."""
        return 1 + int(self.config.shared_encoder) + len(self.config.families)

    def _run_unit(self, cell: dict, seed: int, bar=None) -> tuple[dict | None, str | None]:
        """(result, None) or (None, error text) for one cell and seed; a failure never stops the sweep."""
        try:
            return self.evaluate_cell(cell, seed, bar), None
        except (SeqsenseError, ValueError, RuntimeError, OSError) as e:
            return None, f"error: {type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"

    def _run_parallel(self, work: list, bar) -> list:
        """Run (cell, seed) units in `jobs` processes, each with its share of the CPU threads.

        Workers report progress through a queue, so the bar moves with every trained family.
        """
        import concurrent.futures as cf
        import multiprocessing
        import queue as queue_lib

        jobs = min(self.jobs, len(work))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager, cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
            events = manager.Queue()
            config = dataclasses.asdict(self.config)
            futures = [pool.submit(_worker_unit, config, str(self.out), cell, seed, events) for cell, seed in work]
            pending = set(futures)
            while pending:
                done, pending = cf.wait(pending, timeout=0.5)
                while True:
                    try:
                        kind, value = events.get_nowait()
                    except queue_lib.Empty:
                        break
                    if kind == "update":
                        bar.update(value)
                    else:
                        bar.set_postfix_str(value)
            return [f.result() for f in futures]

    def aggregate(self, per_cell: dict[str, list[dict]], errors: dict[str, str], elapsed_s: float) -> dict:
        """The results dict: per cell, mean metrics per model, needs, rank agreement, example."""
        from seqsense.claims import assess_claims
        from seqsense.scenarios import get_scenario, resolve_knobs

        c = self.config
        cells_out = {}
        for cell in self.cells:
            name = cell["name"]
            defaults = resolve_knobs(get_scenario(cell["scenario"]), {})
            entry = {
                "scenario": cell["scenario"],
                "knobs": cell["knobs"],
                "swept": {k: v for k, v in cell["knobs"].items() if defaults.get(k) != v and k != "image_size"},
                "target": cell["target"],
                "inputs": list(cell["inputs"]),
                "seeds": list(c.seeds),
                "episodes": {"train": cell["episodes"], "test": c.test_episodes},
                "status": errors.get(name, "done"),
            }
            results = per_cell.get(name, [])
            if results:
                entry.update(summarize_cell(results, self.memoryless, c))
            cells_out[name] = entry
        out = {
            "seqsense_version": __version__,
            "recipe": c.recipe,
            "seed": c.seeds[0],
            "seeds": list(c.seeds),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": elapsed_s,  # this invocation; cells finished by an earlier one were loaded
            "compute_s": sum(r.get("seconds", 0.0) for res in per_cell.values() for r in res),
            "machine": machine_info(),
            "budget": {"steps": c.steps, "time_budget_s": c.time_budget_s, "batch_size": c.batch_size, "window": c.window, "hidden": c.hidden},
            "families": list(c.families),
            "memoryless": self.memoryless,
            "margin": c.margin,
            "cells": cells_out,
        }
        out["claims"] = assess_claims(out)
        return out


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class _QueueBar:
    """The part of a tqdm bar a worker uses, forwarded to the parent's bar through a queue."""

    def __init__(self, events):
        self.events = events

    def update(self, n: int = 1) -> None:
        self.events.put(("update", n))

    def set_postfix_str(self, text: str) -> None:
        self.events.put(("postfix", text))


def _worker_unit(config: dict, out_dir: str, cell: dict, seed: int, events=None):
    """One (cell, seed) in a worker process: (result, error) as in Study._run_unit."""
    study = Study(StudyConfig(**config), out_dir, progress=False, log=lambda *_: None)
    return study._run_unit(cell, seed, _QueueBar(events) if events is not None else None)


def summarize_cell(results: list[dict], memoryless: list[str], config: StudyConfig) -> dict:
    """Mean metrics per model, per-episode rows, need gaps and rank agreement for one cell."""
    from seqsense.evaluate.replay import mean_row
    from seqsense.evaluate.verdict import rank_agreement, temporal_gap

    rows = [r for res in results for r in res["rows"]]
    labels = list(results[0]["models"])
    models = {}
    for label in labels:
        mrows = [r for r in rows if r["model"] == label]
        info = dict(results[0]["models"][label])
        for key in ("train_seconds", "train_steps"):
            info[key] = float(np.mean([res["models"][label][key] for res in results]))
        info["metrics"] = mean_row(mrows)
        target_var = np.nanmean([res.get("target_var") or math.nan for res in results])
        if math.isfinite(target_var) and target_var > 0 and "rmse" in info["metrics"]:
            info["metrics"]["r2"] = 1.0 - info["metrics"]["rmse"] ** 2 / target_var
        info["per_episode"] = [{k: v for k, v in r.items() if k != "model"} for r in mrows]
        models[label] = info
    consumers = sorted({k.split(".")[0] for r in rows for k in r if k.endswith(".cost")})
    need, ranks = {}, {}
    seeds = sorted({r["seed"] for r in rows})
    # A memoryless model behind a smoother carries state: it counts as temporal (the cheapest kind).
    memoryless_labels = [m for m in labels if models[m]["family"] in memoryless and not models[m]["wrapper"]]
    temporal = [m for m in labels if m not in memoryless_labels]
    for cons in consumers:
        key = f"{cons}.cost"
        costs = {}
        for label in labels:
            per_seed = []
            for s in seeds:
                vals = [r.get(key, math.nan) for r in rows if r["model"] == label and r["seed"] == s]
                per_seed.append(vals)
            arr = np.asarray(per_seed, float)  # (S, E)
            if np.isfinite(arr).all():
                costs[label] = arr
        if not any(m in costs for m in memoryless_labels) or not any(m in costs for m in temporal):
            continue
        gap = temporal_gap(
            costs,
            memoryless=[m for m in memoryless_labels if m in costs],
            temporal=[m for m in temporal if m in costs],
            margin=config.margin,
            n_boot=config.n_boot,
            seed=0,
        )
        need[cons] = gap.as_dict()
        best_r2 = max((models[m]["metrics"].get("r2", math.nan) for m in labels), default=math.nan)
        if math.isfinite(best_r2) and best_r2 < MIN_R2:
            # Neither side learned the target: a small gap says nothing about the need for memory.
            need[cons]["verdict"] = INCONCLUSIVE
            need[cons]["note"] = f"no model learned the target within the budget (best R² {best_r2:.2f} < {MIN_R2})"
        rmse = {m: models[m]["metrics"].get("rmse", math.nan) for m in costs}
        cost = {m: float(np.mean(costs[m])) for m in costs}
        ranks[cons] = rank_agreement(rmse, cost)
    ex = results[0]["example"]
    return {
        "target_fields": results[0].get("target_fields"),
        "models": models,
        "consumers": consumers,
        "need": need,
        "rank_agreement": ranks,
        "example": ex,
    }


def machine_info() -> dict:
    """CPU model, core count and library versions, for the report's header."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "device": "cpu", "python": platform.python_version()}
