"""Predictions saved beside the truth and the inputs they came from, as one seqsense log.

`save_predictions` writes, for every replayed episode, what a person (or a trajectory plot) needs to
see what a model did, with N the replay's ticks, D the target's fields and K its classes:

    pred/<model>/mean    vector (N, D) float32, the target's fields and units
                         (label (N,) int64, the predicted class, for label targets)
    pred/<model>/var     vector (N, D) float32, the target's fields, units squared (where the model has one)
    pred/<model>/probs   vector (N, K) float32, fields p0 … p{K-1} (label targets)
    <target>             the truth target stream as recorded, with the other non-image `truth/...`
                         streams and the scenario's optimal-filter stream where it names one
    <input>              every input stream the models read, images included (unless include_inputs=False)

`pred/...` streams are on the predictor's clock (the replay's ticks); copied streams keep their own
timestamps. Each `pred/` stream carries `model`, `target` and `quantity` attributes. The result is an
ordinary seqsense log (it passes `seqsense inspect --validate` and opens with `open_log`), written
with the streaming atomic writer, so it never appears half written. `load_predictions` reads it back
as numpy arrays, with the truth taken at the ticks exactly as the evaluator took it.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from seqsense.errors import SeqsenseError
from seqsense.evaluate.replay import Replay
from seqsense.log import LogWriter, open_log
from seqsense.log.format import DISCRETE_KINDS, NS_PER_S, seconds_to_ns
from seqsense.log.reader import Stream

PRED_PREFIX = "pred"
SAVED_FORMAT = "seqsense-predictions"
COPY_BLOCK_BYTES = 4 * 1024 * 1024  # samples copied per block, so long image streams stay in bounded memory
SNAP_TOLERANCE_NS = 1_000  # replay times (float seconds) within this of a stream's timestamps are those timestamps
STANDARD_ATTRS = ("kind", "units", "fields", "frame_id", "source", "rate_hz", "allow_nan")


def pred_stream(model: str, quantity: str) -> str:
    """Name of a saved prediction stream: pred/<model>/<quantity> (quantity: mean, var or probs)."""
    return f"{PRED_PREFIX}/{model}/{quantity}"


def _per_model(value, models: Sequence[str], what: str) -> dict:
    """A value given once for every model, or a mapping model -> value covering every model."""
    if isinstance(value, Mapping):
        missing = [m for m in models if m not in value]
        if missing:
            raise SeqsenseError(f"save_predictions: no {what} given for model(s) {missing}.")
        return dict(value)
    return {m: value for m in models}


def _episode_names(sources: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Output episode name per (file, episode): the episode's own name unless two files share it."""
    plain = [e for _, e in sources]
    if len(set(plain)) == len(plain):
        return {src: src[1] for src in sources}
    names, taken = {}, set()
    for f, e in sources:
        name = base = f"{Path(f).stem}_{e}"
        k = 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names[(f, e)] = name
    return names


def _copy_attrs(st: Stream) -> dict:
    """Keyword arguments recreating stream `st`'s attributes in an EpisodeWriter.stream call."""
    ds = st.data
    kw = dict(units=st.units, frame_id=st.frame_id, source=st.source, rate_hz=st.rate_hz, allow_nan=st.allow_nan)
    if st.kind == "vector":
        kw["fields"] = st.fields
    if ds.compression in ("lzf", "gzip"):
        kw["compression"] = ds.compression
    if ds.chunks is not None:
        kw["chunk_samples"] = int(ds.chunks[0])
    extra = {}
    for key, v in st.group.attrs.items():
        if key not in STANDARD_ATTRS:
            extra[key] = v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v
    kw["attrs"] = extra
    return kw


def copy_stream(st: Stream, episode_writer, name: str | None = None) -> None:
    """Copy stream `st` (attributes and samples, in bounded blocks) into an open EpisodeWriter."""
    w = episode_writer.stream(name or st.name, st.kind, st.sample_shape, **_copy_attrs(st))
    sample_bytes = max(1, int(np.prod(st.sample_shape, dtype=np.int64)) * st.dtype.itemsize)
    block = max(1, COPY_BLOCK_BYTES // sample_bytes)
    t = st.t
    for i0 in range(0, len(t), block):
        w.extend(t[i0 : i0 + block], st.read(i0, i0 + block))


def _ticks(t_s: np.ndarray, episode, names: Sequence[str]) -> tuple[np.ndarray, float]:
    """(tick times in int nanoseconds, nominal rate) of a replay. Where a named stream's timestamps are
    the clock, they are used as they are (float seconds lose a few hundred ns on epoch clocks) with the
    stream's nominal rate; otherwise the seconds are rounded and the rate is 1 / median tick interval."""
    t_ns = seconds_to_ns(t_s)
    for name in names:
        if episode.has_stream(name):
            st = episode.stream(name)
            if len(st) == len(t_ns) and (len(t_ns) == 0 or np.abs(st.t - t_ns).max() <= SNAP_TOLERANCE_NS):
                if np.isfinite(st.rate_hz) and st.rate_hz > 0:
                    return np.asarray(st.t, np.int64), float(st.rate_hz)
                t_ns = np.asarray(st.t, np.int64)
                break
    dt = np.diff(t_ns)
    rate_hz = float(NS_PER_S / np.median(dt)) if len(dt) and np.median(dt) > 0 else float("nan")
    return t_ns, rate_hz


def _squared_units(units: str) -> str:
    """Units of a variance: 'm' -> 'm^2', 'm/s' -> '(m/s)^2'."""
    if not units:
        return ""
    return f"{units}^2" if units.replace("_", "").isalnum() else f"({units})^2"


def _write_predictions(ep_writer, model: str, rep: Replay, target_st: Stream, t_ns: np.ndarray, rate_hz: float) -> None:
    """The pred/<model>/... streams of one replay, with the target's fields and units."""
    where = f"Model '{model}' on log '{rep.file}' episode '{rep.episode}'"
    common = dict(frame_id=target_st.frame_id, source=f"seqsense eval ({model})", rate_hz=rate_hz)

    def attrs(quantity):
        return {"model": model, "target": target_st.name, "quantity": quantity}

    def write(quantity, kind, data, **kw):
        data = np.asarray(data)
        allow_nan = kind == "vector" and not np.isfinite(data).all()
        ep_writer.write_stream(pred_stream(model, quantity), kind, t_ns, data, allow_nan=allow_nan, attrs=attrs(quantity), **common, **kw)

    if target_st.kind in DISCRETE_KINDS:
        write("mean", "label", np.asarray(rep.mean).reshape(-1).astype(np.int64), units=target_st.units)
        if rep.probs is not None:
            probs = np.asarray(rep.probs).reshape(len(t_ns), -1)
            write("probs", "vector", probs, fields=[f"p{k}" for k in range(probs.shape[1])], units="probability")
        return
    fields = target_st.fields or [target_st.name.rsplit("/", 1)[-1]]
    mean = np.asarray(rep.mean).reshape(len(t_ns), -1)
    if mean.shape[1] != len(fields):
        raise SeqsenseError(f"{where}: predictions have {mean.shape[1]} component(s) but target '{target_st.name}' has fields {fields}.")
    write("mean", "vector", mean, fields=fields, units=target_st.units)
    if rep.var is not None:
        write("var", "vector", np.asarray(rep.var).reshape(mean.shape), fields=fields, units=_squared_units(target_st.units))


def _truth_names(episode, target: str) -> list[str]:
    """Streams copied as truth: the target, the other non-image truth/... streams and the optimal-filter stream."""
    names = [target]
    names += [s for s in episode.stream_names if s.startswith("truth/") and s != target]
    optimal = episode.log.provenance.get("optimal")
    if isinstance(optimal, str) and episode.has_stream(optimal):
        names.append(optimal)
    return [s for s in dict.fromkeys(names) if episode.stream(s).kind != "image"]


def save_predictions(
    path: str | os.PathLike,
    replays_by_model: Mapping[str, Sequence[Replay]],
    target: str | Mapping[str, str],
    inputs: Sequence[str] | Mapping[str, Sequence[str]] = (),
    include_inputs: bool = True,
    provenance: dict | None = None,
) -> Path:
    """Write every model's replayed predictions with the truth (and the inputs) as one seqsense log.

    `replays_by_model` maps a model label to its replays (each names its source log and episode);
    `target` and `inputs` are the stream names the models were evaluated on, once for all models or per
    model. `provenance` (e.g. each model's family) is stored under the file provenance's "models" key.
    """
    models = list(replays_by_model)
    if not models or not any(replays_by_model.values()):
        raise SeqsenseError(f"Nothing to save in '{path}': no replayed episodes.")
    bad = [m for m in models if not m or "/" in m]
    if bad:
        raise SeqsenseError(f"save_predictions: model labels {bad} cannot name streams pred/<model>/...; use non-empty labels without '/'.")
    targets = _per_model(target, models, "target")
    model_inputs = {m: list(v) for m, v in _per_model(inputs, models, "inputs").items()}
    by_source: dict[tuple[str, str], list[tuple[str, Replay]]] = defaultdict(list)
    for m in models:
        for rep in replays_by_model[m]:
            by_source[(str(rep.file), rep.episode)].append((m, rep))
    names = _episode_names(list(by_source))
    logs = {f: open_log(f) for f in dict.fromkeys(f for f, _ in by_source)}
    all_inputs = list(dict.fromkeys(s for m in models for s in model_inputs[m]))
    prov = {
        "format": SAVED_FORMAT,
        "target": targets[models[0]],
        "inputs": all_inputs if include_inputs else [],
        "models": {m: {"target": targets[m], "inputs": model_inputs[m], **(provenance or {}).get(m, {})} for m in models},
        "sources": {f: log.provenance for f, log in logs.items()},
    }
    try:
        with LogWriter(path, provenance=prov) as out:
            for (f, e), entries in by_source.items():
                src = logs[f].episode(e)
                ep = out.episode(names[(f, e)], provenance={**src.provenance, "source_file": f, "source_episode": e})
                copied = []
                for m, _ in entries:
                    copied += _truth_names(src, targets[m])
                    copied += model_inputs[m] if include_inputs else []
                for s in dict.fromkeys(copied):
                    copy_stream(src.stream(s), ep)
                for m, rep in entries:
                    target_st = src.stream(targets[m])
                    t_ns, rate_hz = _ticks(rep.t_s, src, [targets[m], *model_inputs[m]])
                    _write_predictions(ep, m, rep, target_st, t_ns, rate_hz)
    finally:
        for log in logs.values():
            log.close()
    return Path(path)


def truth_at(st: Stream, t_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(truth, valid) of stream `st` at times t_ns, as the dataset takes a target: vector streams
    interpolated linearly (NaN outside their time range), label streams held from the latest sample."""
    t, x = st.t, st.data[()]
    if st.kind in DISCRETE_KINDS:
        i = np.searchsorted(t, t_ns, side="right") - 1
        return x[np.clip(i, 0, None)].astype(np.int64), i >= 0
    x = x.reshape(len(t), -1)
    if np.array_equal(t, t_ns):
        y = x.astype(np.float32)
    else:
        y = np.empty((len(t_ns), x.shape[1]), np.float32)
        tf, tqf = (t - t[0]).astype(np.float64), (t_ns - t[0]).astype(np.float64)
        for d in range(x.shape[1]):
            y[:, d] = np.interp(tqf, tf, x[:, d].astype(np.float64), left=np.nan, right=np.nan)
    return y, np.isfinite(y).all(axis=1)


def load_predictions(path: str | os.PathLike) -> dict[str, dict[str, dict]]:
    """Saved predictions as {model: {episode: entry}}; entry holds numpy arrays `t_ns` (N,), `t_s` (N,),
    `mean` (N, D) or (N,) labels, `var` (N, D) or None, `probs` (N, K) or None, `truth` (N, D) or (N,)
    (the target at the ticks, NaN where it has no value) and `valid` (N,), plus `target`, `fields`,
    `units`, `source_file` and `source_episode`."""
    log = open_log(path)
    out: dict[str, dict[str, dict]] = {}
    try:
        for ep in log.episodes():
            for s in ep.stream_names:
                parts = s.split("/")
                if len(parts) != 3 or parts[0] != PRED_PREFIX or parts[2] != "mean":
                    continue
                model = parts[1]
                mean_st = ep.stream(s)
                target = str(mean_st.group.attrs.get("target", ""))
                if not ep.has_stream(target):
                    raise SeqsenseError(f"Log '{path}' episode '{ep.name}': predictions of '{model}' name target {target!r}, which the file lacks.")
                t_ns = mean_st.t

                def read(quantity):
                    name = pred_stream(model, quantity)
                    return ep.stream(name).data[()] if ep.has_stream(name) else None

                truth, valid = truth_at(ep.stream(target), t_ns)
                out.setdefault(model, {})[ep.name] = {
                    "t_ns": t_ns,
                    "t_s": t_ns / NS_PER_S,
                    "mean": mean_st.data[()],
                    "var": read("var"),
                    "probs": read("probs"),
                    "truth": truth,
                    "valid": valid,
                    "target": target,
                    "fields": mean_st.fields,
                    "units": mean_st.units,
                    "source_file": ep.provenance.get("source_file", ""),
                    "source_episode": ep.provenance.get("source_episode", ep.name),
                }
    finally:
        log.close()
    return out
