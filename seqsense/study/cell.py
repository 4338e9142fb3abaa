"""One unit of the study: a cell and seed, from its generated logs to its evaluation rows.

In order, each step written atomically and found again on the next run:
1. the cell's train and test logs, generated once (`logs/`);
2. for camera cells (with `cached_features`), the per-frame encoder and the feature logs
   (`seqsense.study.features`);
3. every family that applies to the cell, and its memoryless twin (`ModelClass.twin_overrides()`),
   trained on the same data, steps and seed (`runs/<family>`, `runs/<family>-twin`);
4. each model's smoothing time constant per consumer, tuned on the validation episodes that
   training split off the training log (never on test), by smoothing saved validation predictions
   offline;
5. the test episodes replayed through every model (the first tick by tick through its streaming
   predictor, which checks the offline `predict` used for the others); metrics and consumer costs
   for the model, and for the model behind its tuned exponential smoother (`+ema`); every replay
   saved as `predictions.h5` (`seqsense.evaluate.saved`), from which the report's trajectories come;
6. the oracle gap from the generator's truth, where the scenario has one (`seqsense.evaluate.oracle`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from seqsense.errors import ConfigError
from seqsense.fileio import write_json_atomic
from seqsense.log.format import NS_PER_S
from seqsense.study.config import ENCODER_WINDOW, StudyConfig
from seqsense.study.features import image_inputs, write_feature_log

TWIN = "-twin"
SMOOTHED = "+ema"
STEP_RTOL, STEP_ATOL = 1e-4, 1e-5  # offline predict vs the streaming step: float32 rounding over a whole episode
MAX_VAL_EPISODES = 4  # smoothing is tuned on at most this many of the validation episodes


class Progress:
    """Forwards progress to the executor's events channel (or nowhere)."""

    def __init__(self, events=None, label: str = ""):
        self.events, self.label = events, label

    def update(self, n: int = 1) -> None:
        if self.events is not None:
            self.events.put(("update", n))

    def status(self, text: str) -> None:
        if self.events is not None:
            self.events.put(("postfix", f"{self.label}: {text}"))


def units_per_cell(families: list[str]) -> int:
    """Progress units of one cell and seed: its logs, its encoder, each family, the evaluation."""
    return 3 + len(families)


def packed_inputs(cell: dict, log_path: Path) -> dict:
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


class CellRun:
    """The files and trained models of one cell and seed under `out/cells/<cell>/seed<S>/`."""

    def __init__(self, config: StudyConfig, out: Path, cell: dict, seed: int, families: list[str], events=None):
        self.config, self.cell, self.seed, self.families = config, cell, seed, families
        self.dir = Path(out) / "cells" / cell["name"] / f"seed{seed}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.progress = Progress(events, f"{cell['name']} seed {seed}")

    # ---- data ------------------------------------------------------------------------------------
    def generate_logs(self) -> tuple[Path, Path]:
        """(train log, test log), generated once."""
        from seqsense.scenarios import generate

        cell, base = self.cell, int(self.cell.get("seed", 0)) + 1000 * self.seed
        if cell.get("logs"):
            return self.split_recorded(base)
        paths = []
        for split, episodes, s in (("train", cell["episodes"], base), ("test", self.config.test_episodes, base + 500)):
            path = self.dir / f"{split}.h5"
            if not path.exists():
                generate(cell["scenario"], path, episodes=episodes, seed=s, duration_s=cell["duration_s"], knobs=cell["knobs"])
            paths.append(path)
        return paths[0], paths[1]

    def split_recorded(self, seed: int) -> tuple[Path, Path]:
        """(train log, test log) of a cell on recorded logs: its episodes split by episode with a fixed seed
        (`test_fraction` of them to test) or, with `test_logs`, those logs' episodes to test; copied whole
        (streams, attributes, provenance), once."""
        from seqsense.dataset import episode_refs, split_episodes

        paths = (self.dir / "train.h5", self.dir / "test.h5")
        if all(p.exists() for p in paths):
            return paths
        if self.cell.get("test_logs"):  # a fixed split: e.g. train on one recording, test on another
            train, test = episode_refs(self.cell["logs"]), episode_refs(self.cell["test_logs"])
        else:
            train, test = split_episodes(episode_refs(self.cell["logs"]), self.cell["test_fraction"], seed)
        if len(train) < 2:
            raise ConfigError(f"cell {self.cell['name']!r}: {len(train)} training episode(s) after holding out {len(test)} "
                              "for testing; training needs two (one validates). Add episodes or lower test_fraction.")
        for dest, refs in zip(paths, (train, test)):
            copy_episodes(refs, dest)
        return paths

    def model_logs(self, train_log: Path, test_log: Path) -> tuple[Path, Path, dict | None]:
        """The logs the families train and are tested on: the feature logs of camera cells, else the raw ones."""
        frames = image_inputs(train_log, self.cell["inputs"])
        if not frames:
            return train_log, test_log, None
        target = self.cell.get("encoder_target", self.cell["target"])
        extra = {"steps": self.config.encoder_steps, "window": ENCODER_WINDOW}
        model, summary = self.train_or_load("encoder", "framewise", train_log, extra, target=target)
        summary = {**summary, "target": target, "frames": frames}
        if not self.config.cached_features:
            return train_log, test_log, summary
        paths = []
        for src in (train_log, test_log):
            dest = self.dir / f"{src.stem}_features.h5"
            if not dest.exists():
                write_feature_log(model, src, dest)
            paths.append(dest)
        return paths[0], paths[1], summary

    # ---- training --------------------------------------------------------------------------------
    def train_or_load(self, run: str, family: str, train_log: Path, extra: dict | None = None, target: str | None = None):
        """(model, summary) of run dir `runs/<run>`: trained now, or loaded from a finished run."""
        from seqsense.models.checkpoint import load_checkpoint
        from seqsense.train import train

        run_dir = self.dir / "runs" / run
        done = run_dir / "train_summary.json"
        if done.exists():
            return load_checkpoint(run_dir), json.loads(done.read_text())
        c = self.config
        overrides = {
            "steps": c.steps,
            "batch_size": c.batch_size,
            "window": c.window,
            "hidden": c.hidden,
            "val_every": max(1, c.steps // 4),
            "seed": self.seed,
            "packed": packed_inputs(self.cell, train_log),
            **(extra or {}),
        }
        enc = self.dir / "runs" / "encoder"
        end_to_end = run != "encoder" and not c.cached_features and (enc / "train_summary.json").exists()
        init = enc if end_to_end else None  # --full: every model starts from the cell's frame encoder
        res = train(family, [train_log], overrides, run_dir, inputs=self.cell["inputs"], target=target or self.cell["target"],
                    progress=False, log=lambda *_: None, init_encoder=init)
        summary = {
            "num_parameters": res.num_parameters,
            "train_steps": res.steps,
            "train_seconds": res.seconds,
            "train_loss": res.train_loss,
            "val_loss": res.val_loss,
            "best_step": res.best_step,
        }
        write_json_atomic(done, summary)
        return res.model, summary

    def family_models(self, family: str, train_log: Path) -> dict[str, tuple]:
        """label -> (model, info) for a family and its twin; ConfigError when the family does not apply to the cell.

        `oracle_system` marks a model that runs the log's own stored system (kalman on a generated
        linear-Gaussian log): the oracle, reported but never picked as a learned family."""
        from seqsense.models import get_model_class

        cls, _ = get_model_class(family)
        twin_overrides = cls.twin_overrides()
        out = {}
        latest = {} if cls.reads_packed else {"packed": {}}  # such a family reads the latest sample of each input
        for label, extra, twin in ((family, {}, False), (family + TWIN, twin_overrides, True)):
            if twin and not twin_overrides:
                continue  # the family has no memory: it is its own twin
            settings = self.cell.get("model_settings", {}).get(family, {})  # the cell's own settings: family and twin alike
            model, summary = self.train_or_load(label, family, train_log, {**latest, **settings, **extra})
            info = {"family": family, "twin": twin, "wrapper": None, "has_memory": bool(model.has_memory),
                    "oracle_system": bool(getattr(model, "uses_metadata", False)), **summary}
            out[label] = (model, info)
        return out

    # ---- evaluation ------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Train, tune and replay everything of this cell and seed; the eval dict (also eval.json)."""
        from seqsense.dataset import WindowDataset, episode_refs

        path = self.dir / "eval.json"
        if path.exists():
            self.progress.update(units_per_cell(self.families))
            return json.loads(path.read_text())
        t0 = time.perf_counter()
        self.progress.status("logs")
        train_raw, test_raw = self.generate_logs()
        self.progress.update(1)
        self.progress.status("encoder")
        train_log, test_log, encoder = self.model_logs(train_raw, test_raw)
        self.progress.update(1)
        models, skipped = {}, {}
        for family in self.families:
            self.progress.status(family)
            try:
                models.update(self.family_models(family, train_log))
            except ConfigError as e:
                skipped[family] = str(e)
            self.progress.update(1)
        if not models:
            raise ConfigError(f"cell {self.cell['name']!r}: no model family applies ({skipped}).")
        self.progress.status("evaluation")
        data: dict[str, tuple] = {}  # (test, val) datasets per input layout (clock, packing), built once
        rows, infos, saved = [], {}, {}
        for label, (model, info) in models.items():
            spec = model.config.window_spec(window=1)
            layout = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)
            if layout not in data:
                data[layout] = (WindowDataset(episode_refs([test_log]), spec), WindowDataset(self._val_refs(train_log, model.config), spec))
            test, val = data[layout]
            taus = tune_smoothing(model, val, self.config.smoothing_taus_s)
            reps = test_replays(model, test)
            for k, rep in enumerate(reps):
                where = {"file": Path(rep.file).name, "model": label, "seed": self.seed}  # relative: results move with the folder
                rows.append({**score(rep, test, k), **where})
                rows.append({**score_smoothed(rep, test, k, taus), **where, "model": label + SMOOTHED})
            infos[label] = info
            infos[label + SMOOTHED] = {**info, "wrapper": "ema", "tau_s": {c: t for c, t in taus.items()}}
            saved[label] = reps
            saved[label + SMOOTHED] = [smoothed(rep, taus.get("tracking")) for rep in reps]
        self.progress.update(1)
        from seqsense.evaluate.oracle import oracle_gap
        from seqsense.evaluate.saved import save_predictions
        from seqsense.report.trajectory import trajectory_example

        predictions = self.dir / "predictions.h5"  # every test replay, as streams pred/<model>/... beside the truth
        if not predictions.exists():
            save_predictions(predictions, saved, self.cell["target"], include_inputs=False)

        result = {
            "cell": self.cell["name"],
            "seed": self.seed,
            "target_var": _target_var(test),
            "target_fields": test.index(0).streams[self.cell["target"]].fields,
            "seconds": time.perf_counter() - t0,
            "encoder": encoder,
            "skipped": skipped,
            "models": infos,
            "rows": rows,
            "oracle": oracle_gap(test_raw, self.cell["target"]),
            "example": trajectory_example(predictions, test),
        }
        write_json_atomic(path, result)
        return json.loads(path.read_text())

    def _val_refs(self, train_log: Path, model_config) -> list:
        """The validation episodes training split off the training log (the same split `train` makes)."""
        from seqsense.dataset import episode_refs, split_episodes

        _, val = split_episodes(episode_refs([train_log]), model_config.val_fraction, self.seed)
        return val


def copy_episodes(refs: list[tuple[str, str]], dest: Path) -> None:
    """Write the (file, episode) pairs into one log at `dest` (temp file + rename): root attributes from the
    first file, each episode group copied whole, renamed `<file stem>_<episode>` where names repeat."""
    import h5py

    from seqsense.log.format import EPISODES_GROUP

    names = [e for _, e in refs]
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as out:
            group = out.create_group(EPISODES_GROUP)
            for i, (f, e) in enumerate(refs):
                with h5py.File(f, "r") as src:
                    if i == 0:
                        out.attrs.update(dict(src.attrs))
                    name = e if names.count(e) == 1 else f"{Path(f).stem}_{e}"
                    src.copy(src[EPISODES_GROUP][e], group, name=name)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _target_var(dataset) -> float | None:
    truth = [w["target"][w["target_valid"]] for w in (dataset.sequence(k) for k in range(len(dataset.episodes)))]
    if not truth or truth[0].ndim != 2:
        return None
    return float(np.var(np.concatenate(truth), axis=0).mean())


def replay(predictor, dataset, k: int):
    """Episode k replayed through a streaming predictor, tick by tick."""
    from seqsense.evaluate.replay import replay_episode

    return replay_episode(predictor, dataset, k)


def test_replays(model, dataset) -> list:
    """Every test episode's replay. The first goes through the streaming predictor tick by tick
    (`reset()`/`step()`, with step latencies); the others through offline `predict`, which the first
    checks against the streaming loop (SeqsenseError if they differ beyond float rounding)."""
    from seqsense.errors import SeqsenseError

    stream = replay(model.predictor(), dataset, 0)
    reps = [stream] + [offline_replay(model, dataset, k) for k in range(1, len(dataset.episodes))]
    check = offline_replay(model, dataset, 0)
    for key in ("mean", "var"):
        a, b = getattr(stream, key), getattr(check, key)
        if a is not None and b is not None and not np.allclose(a, b, rtol=STEP_RTOL, atol=STEP_ATOL, equal_nan=True):
            worst = float(np.nanmax(np.abs(np.asarray(a, float) - np.asarray(b, float))))
            raise SeqsenseError(f"{type(model).__name__}: offline predict and the streaming step disagree on test episode "
                                f"{dataset.episodes[0][1]!r} ({key} differs by up to {worst:.3g}); the model breaks its contract.")
    return reps


def offline_replay(model, dataset, k: int):
    """Episode k through the model's offline `predict` (equal to the streaming loop, faster): a Replay
    without step latencies, for tuning on validation episodes."""
    from seqsense.evaluate.replay import Replay

    seq = dataset.sequence(k)
    out = model.predict({key: v for key, v in seq.items() if key not in ("target", "target_valid")})
    f, e = dataset.episodes[k]
    return Replay(file=f, episode=e, t_s=seq["t_ns"] / NS_PER_S, y_true=seq["target"], valid=seq["target_valid"].astype(bool),
                  mean=out["mean"], var=out.get("var"), probs=None, step_s=np.full(len(seq["t_ns"]), np.nan))


def score(rep, dataset, k: int) -> dict:
    """Metrics and consumer costs of one replayed episode."""
    from seqsense.evaluate.replay import score_episode

    return score_episode(rep, dataset, k)


def smoothed(rep, tau_s: float | None):
    """The replay behind an exponential smoother with time constant tau_s (None: unchanged)."""
    from seqsense.evaluate.wrappers import exponential_smoothing

    if tau_s is None or rep.y_true.ndim == 1:
        return rep
    mean, var = exponential_smoothing(rep.mean, tau_s=tau_s, t_s=rep.t_s, var=rep.var)
    return dataclasses.replace(rep, mean=mean, var=var)


def scored_consumers(row: dict) -> list[str]:
    """The consumers scored in a row (keys `<consumer>.cost`)."""
    return sorted(k.split(".")[0] for k in row if k.endswith(".cost"))


def tune_smoothing(model, val, taus_s) -> dict[str, float | None]:
    """Per consumer, the smoothing time constant (or None: no smoothing) with the lowest mean cost on `val`."""
    from seqsense.evaluate.replay import consumer_summaries

    if len(val.episodes) == 0 or model.discrete:
        return {}
    reps = [offline_replay(model, val, k) for k in range(min(len(val.episodes), MAX_VAL_EPISODES))]
    costs: dict[str, dict] = {}
    for tau in (None, *taus_s):
        rows = [consumer_summaries(smoothed(rep, tau), val, k) for k, rep in enumerate(reps)]  # rep k is episode k
        for c in scored_consumers(rows[0]):
            costs.setdefault(c, {})[tau] = float(np.mean([r[f"{c}.cost"] for r in rows]))
    # the smallest cost; ties go to less smoothing (None first, then the shortest time constant)
    return {c: min(by_tau, key=lambda t: (by_tau[t], -1.0 if t is None else t)) for c, by_tau in costs.items()}


def score_smoothed(rep, dataset, k: int, taus: dict) -> dict:
    """A row for the model behind its tuned smoother: each consumer's cost with its own time constant.

    The metrics that are not consumer costs are those of the tracking controller's smoother; each
    consumer's `<consumer>.lag_s` is the delay its own smoother costs.
    """
    from seqsense.evaluate.metrics import lag_s
    from seqsense.evaluate.replay import consumer_summaries

    base = score(smoothed(rep, taus.get("tracking")), dataset, k)
    for c, tau in taus.items():
        if c == "tracking" or tau == taus.get("tracking"):
            base[f"{c}.lag_s"] = base["lag_s"]
            continue
        rep_c = smoothed(rep, tau)
        base.update(consumer_summaries(rep_c, dataset, k, only=c))
        base[f"{c}.lag_s"] = lag_s(rep_c.t_s, rep_c.y_true, rep_c.mean, valid=rep_c.valid)
    base.update({f"{c}.tau_s": (math.nan if tau is None else tau) for c, tau in taus.items()})
    return base
