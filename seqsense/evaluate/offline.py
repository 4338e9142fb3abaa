"""`seqsense eval`: evaluate trained run folders on held-out logs and write metrics files atomically."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

from seqsense.dataset import WindowDataset, episode_refs, resolve_paths
from seqsense.errors import ConfigError, SeqsenseError
from seqsense.evaluate.replay import evaluate_predictor, mean_row
from seqsense.evaluate.wrappers import ExponentialSmoothing, TemporalEnsemble
from seqsense.fileio import to_json, write_atomic

WRAPPERS = {"ema": ExponentialSmoothing, "ensemble": TemporalEnsemble}


def parse_wrappers(specs: Sequence[str]) -> list[tuple[str, type, dict]]:
    """'ema:alpha=0.3' -> [(label, class, kwargs)]; ConfigError naming the valid wrappers and keys."""
    out = []
    for spec in specs:
        name, _, rest = spec.partition(":")
        if name not in WRAPPERS:
            raise ConfigError(f"--wrap {spec!r}: unknown wrapper {name!r}; valid: {', '.join(WRAPPERS)}.")
        kwargs = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"--wrap {spec!r}: {item!r} is not key=value.")
            try:
                kwargs[key] = int(value) if key == "k" else float(value)
            except ValueError:
                raise ConfigError(f"--wrap {spec!r}: {key}={value!r} is not a number.") from None
        out.append((f"{name}({rest})" if rest else name, WRAPPERS[name], kwargs))
    return out


def parse_consumer_overrides(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """['tracking.kp=50'] -> {'tracking': {'kp': '50'}} (values converted by the consumer config)."""
    from seqsense.evaluate.consumers import consumer_names

    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        name, dot, field = key.partition(".")
        if not eq or not dot:
            raise ConfigError(f"--consumer {item!r} is not of the form NAME.KEY=VALUE (e.g. tracking.kp=50).")
        if name not in consumer_names():
            raise ConfigError(f"--consumer {item!r}: unknown consumer {name!r}; valid: {', '.join(consumer_names())}.")
        out.setdefault(name, {})[field] = value
    return out


def check_writable(out_dir: str | os.PathLike) -> Path:
    """Create `out_dir` if needed and check it can be written (SeqsenseError otherwise)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SeqsenseError(f"Cannot create output folder '{out}': {e.strerror}.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise SeqsenseError(f"Output folder '{out}' is not writable; choose another --out.")
    return out


def rows_to_csv(rows: list[dict]) -> str:
    """CSV text of rows with the union of their keys as columns."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def select_episodes(refs: list[tuple[str, str]], episodes: str | None, model, run_name: str) -> list[tuple[str, str]]:
    """The (file, episode) pairs to replay: all, the named ones ('ep_005,ep_006'), or 'val' (the run's held-out split)."""
    if not episodes:
        return refs
    if episodes == "val":
        held_out = set(model.checkpoint_meta.get("extra", {}).get("split", {}).get("val", []))
        chosen = [r for r in refs if f"{Path(r[0]).name}:{r[1]}" in held_out]
        if not chosen:
            raise SeqsenseError(f"Run '{run_name}' held out no episode of these logs for validation; name episodes with --episodes.")
        return chosen
    names = [e.strip() for e in episodes.split(",") if e.strip()]
    known = {e for _, e in refs}
    unknown = [e for e in names if e not in known]
    if unknown:
        raise SeqsenseError(f"--episodes: no episode {unknown} in the logs; episodes there: {sorted(known)[:12]}.")
    return [r for r in refs if r[1] in names]


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Check that file `path` can be written (its folder exists and is writable) before long work starts."""
    p = Path(path)
    if not p.parent.is_dir():
        raise SeqsenseError(f"{what} '{p}': folder '{p.parent}' does not exist; create it or choose another path.")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise SeqsenseError(f"{what} '{p}': folder '{p.parent}' is not writable; choose another path.")
    if p.is_dir():
        raise SeqsenseError(f"{what} '{p}' is a folder; give a file name.")
    return p


def save_outputs(
    replays_by_model,
    targets,
    inputs,
    models_info=None,
    predictions: str | None = None,
    mcap: str | None = None,
    include_inputs: bool = True,
    image_format: str = "jpeg",
) -> list[Path]:
    """Write the saved-predictions log and/or its MCAP view; without `predictions` the log is a temporary file."""
    from seqsense.evaluate.mcap_out import write_mcap
    from seqsense.evaluate.saved import save_predictions

    written = []
    if predictions is None and mcap is None:
        return written
    h5 = Path(predictions) if predictions else Path(mcap).with_name(f".{Path(mcap).name}.{os.getpid()}.h5")
    try:
        save_predictions(h5, replays_by_model, targets, inputs, include_inputs=include_inputs, provenance=models_info)
        if predictions:
            written.append(h5)
        if mcap:
            written.append(write_mcap(h5, mcap, image_format=image_format))
    finally:
        if not predictions:
            h5.unlink(missing_ok=True)
    return written


def evaluate_runs(
    run_dirs,
    data,
    out_dir,
    wrappers=(),
    consumer_overrides=None,
    progress: bool = True,
    episodes: str | None = None,
    save_predictions: str | None = None,
    save_mcap: str | None = None,
    include_inputs: bool = True,
    image_format: str = "jpeg",
) -> dict:
    """Evaluate each run's best model (and wrapped variants) on the episodes of `data` (see select_episodes).

    With `save_predictions` (a seqsense log, see seqsense.evaluate.saved) and/or `save_mcap` (see
    seqsense.evaluate.mcap_out), every replay that was scored is also written out beside the truth and,
    unless `include_inputs` is False, the input streams.
    """
    from tqdm import tqdm

    from seqsense.models.checkpoint import load_checkpoint

    out = check_writable(out_dir)
    saving = bool(save_predictions or save_mcap)
    if save_predictions:
        check_output_file(save_predictions, "--save-predictions")
    if save_mcap:
        check_output_file(save_mcap, "--save-mcap")
    paths = resolve_paths(data)
    for option, target in (("--save-predictions", save_predictions), ("--save-mcap", save_mcap)):
        if target and Path(target).resolve() in {Path(p).resolve() for p in paths}:
            raise SeqsenseError(f"{option} '{target}' is one of the --data logs; choose another file name.")
    refs = episode_refs(paths)
    models = [(Path(r).name or str(r), load_checkpoint(r)) for r in run_dirs]
    all_rows, summary = [], {"data": [str(p) for p in paths], "models": {}}
    replays, targets, inputs, info = {}, {}, {}, {}
    chosen = {name: select_episodes(refs, episodes, model, name) for name, model in models}
    total = sum(len(c) for c in chosen.values()) * (1 + len(wrappers))
    bar = tqdm(total=total, desc="eval", unit="episode", disable=not progress)
    for (name, model), run_dir in zip(models, run_dirs):
        try:
            dataset = WindowDataset(chosen[name], model.config.window_spec(window=1))
        except SeqsenseError as e:
            raise SeqsenseError(f"Run '{name}' cannot be evaluated on these logs: {e}") from None
        variants = [(name, model.predictor())]
        variants += [(f"{name}+{label}", cls(model.predictor(), **kw)) for label, cls, kw in wrappers]
        for label, predictor in variants:
            keep = len(dataset.episodes) if saving else 0
            rows, replays[label] = evaluate_predictor(predictor, dataset, consumer_overrides, keep_replays=keep, progress=bar)
            targets[label], inputs[label] = dataset.spec.target, list(dataset.spec.inputs)
            info[label] = {"family": model.family, "run": str(run_dir)}
            for r in rows:
                r["model"], r["family"] = label, model.family
            all_rows += rows
            summary["models"][label] = {"family": model.family, "num_parameters": model.num_parameters(), **mean_row(rows)}
    bar.close()
    write_atomic(out / "metrics.csv", rows_to_csv(all_rows))
    write_atomic(out / "summary.json", to_json(summary))  # strict JSON: a NaN metric is null
    save_outputs(replays, targets, inputs, info, save_predictions, save_mcap, include_inputs, image_format)
    return summary
