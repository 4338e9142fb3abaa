"""Export one streaming `step` of a trained model to ONNX, with a JSON manifest a robot stack can read.

An export folder holds two files:

- `model.onnx`: one `step` at batch size 1. Inputs, in the manifest's order: `dt_s` (1,) float32, then
  per input stream s the tick keys the dataset delivers (`s` (1, *shape) uint8 for images and float32
  otherwise, `s_age_s`, and `s_valid` (1,) bool or, for packed streams, `s_mask` (1, K) bool), then
  the state tensors `state/NAME`. Outputs: `mean` and `var` (1, D) in target units, or `probs` (1, K)
  for labels, then the next state `next_state/NAME`. Normalization is inside the graph (the encoder's
  input statistics and the target de-normalization), and is repeated in the manifest for reference.
  `t_ns` is not a graph input: no family reads absolute time; the runtime turns `t_ns` into `dt_s`.
- `manifest.json`: streams (kind, shape, dtype, units, fields, rates, topic where the log knows it),
  clock, target, graph inputs/outputs, state layout with initial values, model config, training
  provenance, versions, the export format version and the parity figures of the self-check. Strict
  JSON (`seqsense.fileio.to_json`): a non-finite number is null, e.g. `max_age_s` null = no age limit.

`export_run(run_dir, out_dir)` writes both into a temporary folder beside `out_dir`, checks the graph
(onnx checker, then a parity run of onnxruntime against the torch predictor on ticks from the training
logs when they are reachable, else on random-but-valid ticks) and only then renames it into place, so
nothing is left at `out_dir` when any step fails.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from seqsense import __version__
from seqsense.config import config_to_dict
from seqsense.errors import CheckpointError, SeqsenseError
from seqsense.export.check import PARITY_RTOL, PARITY_TICKS, check_export, random_ticks, training_ticks
from seqsense.export.graph import DEFAULT_OPSET, export_onnx, tick_layout
from seqsense.fileio import from_json, to_json
from seqsense.runtime import EXPORT_FORMAT, EXPORT_FORMAT_VERSION, MANIFEST_FILE, MODEL_FILE

__all__ = ["DEFAULT_OPSET", "export_model", "export_onnx", "export_run", "tick_layout"]


def stream_sources(data_paths: list[str], names: list[str]) -> dict[str, dict]:
    """Source, topic and frame id of each named stream, read from the first reachable training log."""
    from seqsense.log.reader import open_log

    for p in data_paths:
        if not Path(p).exists():
            continue
        try:
            log = open_log(p)
        except SeqsenseError:
            continue
        try:
            ep = log.episode(log.episode_names[0])
            out = {}
            for s in names:
                if ep.has_stream(s):
                    st = ep.stream(s)
                    topic = st.source.split(" in ")[0] if st.source.startswith("/") else ""
                    out[s] = {"source": st.source, "topic": topic, "frame_id": st.frame_id}
            return out
        finally:
            log.close()
    return {}


def build_manifest(model, graph: dict, meta: dict, topics: dict[str, str] | None = None) -> dict:
    """The manifest of an export: everything a robot stack needs besides the graph."""
    cfg = model.config
    extra = meta.get("extra", {}) or {}
    sources = stream_sources(list(extra.get("data", [])), [*cfg.inputs, cfg.target])
    for s, topic in (topics or {}).items():
        if s not in (*cfg.inputs, cfg.target):
            raise SeqsenseError(f"Topic given for {s!r}, which is neither an input nor the target; streams: {[*cfg.inputs, cfg.target]}.")
        sources.setdefault(s, {})["topic"] = topic
    streams = {}
    for s in cfg.inputs:
        info = model.streams[s]
        streams[s] = {
            **dataclasses.asdict(info), "shape": list(info.shape),
            "dtype": "uint8" if info.kind == "image" else "float32",
            "mode": "packed" if s in cfg.packed else "latest", "packed_k": int(cfg.packed.get(s, 0)),
            "max_age_s": cfg.max_age_s if np.isfinite(cfg.max_age_s) else None,
            "topic": "", "source": "", "frame_id": "", **sources.get(s, {}),
        }
    tinfo = model.streams[cfg.target]
    target = {"name": cfg.target, **dataclasses.asdict(tinfo), "shape": list(tinfo.shape), "discrete": model.discrete,
              "num_classes": model.num_classes, **sources.get(cfg.target, {})}
    clock_stream = None if cfg.rate_hz else (cfg.clock or cfg.target)
    nominal = cfg.rate_hz or (model.streams[clock_stream].rate_hz if clock_stream in model.streams else float("nan"))
    clock = {"stream": clock_stream, "rate_hz": cfg.rate_hz, "nominal_rate_hz": nominal if np.isfinite(nominal) else None,
             "dt_s": "computed by the runtime from successive t_ns (0 at the first tick after reset)"}
    import onnx

    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "family": model.family,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "graph": graph,
        "streams": streams,
        "target": target,
        "clock": clock,
        "normalization": {"in_graph": True, "stats": model.normalization},
        "config": config_to_dict(cfg),
        "num_parameters": model.num_parameters(),
        "provenance": {"checkpoint": meta.get("_path", ""), "weights_sha256": meta.get("weights_sha256", ""), "training": extra},
        "versions": {
            "training": meta.get("versions", {}),
            "export": {"seqsense": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                       "python": platform.python_version()},
        },
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_model(model, out_dir: str | os.PathLike, meta: dict | None = None, opset: int = DEFAULT_OPSET,
                 parity_ticks: list[list[dict]] | int | None = None, topics: dict[str, str] | None = None,
                 log=print) -> dict:
    """Export `model` to `out_dir` (must not exist) atomically and check it; returns the manifest.

    `parity_ticks`: episodes of ticks for the self-check, or how many ticks to draw (default 300, from
    the training logs when reachable); `topics`: stream -> ROS topic, overriding what the logs say.
    """
    out = Path(out_dir)
    if out.exists():
        raise SeqsenseError(f"Export folder '{out}' already exists; choose a new --out or remove it.")
    if not out.parent.exists():
        raise SeqsenseError(f"Cannot export to '{out}': folder '{out.parent}' does not exist.")
    meta = dict(meta or getattr(model, "checkpoint_meta", {}) or {})
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        graph = export_onnx(model, tmp / MODEL_FILE, opset)
        graph["sha256"] = _sha256(tmp / MODEL_FILE)
        _stamp_version(tmp / MODEL_FILE, graph)
        manifest = from_json(to_json(build_manifest(model, graph, meta, topics)))  # as the file reads back
        (tmp / MANIFEST_FILE).write_text(to_json(manifest))
        if parity_ticks is None or isinstance(parity_ticks, int):
            n = PARITY_TICKS if parity_ticks is None else parity_ticks
            parity_ticks, where = training_ticks(model, meta, n)
            if not parity_ticks:
                parity_ticks, where = random_ticks(model, n, seed=0), "random-but-valid ticks"
        else:
            where = "given ticks"
        report = check_export(model, tmp, parity_ticks, PARITY_RTOL)
        manifest["parity"] = from_json(to_json({**report, "ticks_from": where}))
        (tmp / MANIFEST_FILE).write_text(to_json(manifest))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {model.family} to '{out}': parity on {report['ticks']} ticks ({where}), max rel. error {report['max_rel_err']:.2e}")
    return manifest


def _stamp_version(path: Path, graph: dict) -> None:
    """Record the export format version inside the ONNX file too, so a graph alone says what it is."""
    import onnx

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"seqsense_export_format": EXPORT_FORMAT,
                                        "seqsense_export_format_version": str(EXPORT_FORMAT_VERSION)})
    onnx.save(proto, str(path))
    graph["sha256"] = _sha256(path)


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, opset: int = DEFAULT_OPSET,
               topics: dict[str, str] | None = None, log=print) -> dict:
    """Export the best checkpoint of a training run dir (or a checkpoint path); returns the manifest."""
    from seqsense.models.checkpoint import checkpoint_paths, load_checkpoint

    run = Path(run_dir)
    if not run.exists():
        raise CheckpointError(f"Run dir '{run}' does not exist; pass the --out folder of a `seqsense train` run.")
    weights, meta_path = checkpoint_paths(run)
    if not meta_path.exists():
        raise CheckpointError(f"'{run}' holds no checkpoint (expected '{meta_path.name}' and '{weights.name}'); "
                              "train first, or pass a checkpoint path such as RUN_DIR/last.json.")
    model = load_checkpoint(run)
    meta = {**model.checkpoint_meta, "_path": str(meta_path)}
    return export_model(model, out_dir, meta, opset, topics=topics, log=log)
