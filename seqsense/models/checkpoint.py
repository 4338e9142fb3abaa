"""Checkpoints: `NAME.safetensors` (weights) + `NAME.json` (everything needed to rebuild the model).

The JSON holds the family, the full config, the stream info, the normalization statistics, the
versions of seqsense and torch, free-form provenance (`extra`, e.g. training step and data) and the
SHA-256 of the weights file, so a truncated or corrupted checkpoint is caught with a clear
`CheckpointError` before torch sees it. Both files are written to temporaries and moved into place
with `os.replace`, the weights first, so a reader never sees a half-written pair. No pickle. The JSON
is strict (`seqsense.fileio.to_json`): inf and NaN are null, and the readers restore inf where a
field is unbounded (config floats such as `max_age_s`, a train state's `best_val`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import platform
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from seqsense import __version__
from seqsense.config import config_from_dict, config_to_dict
from seqsense.dataset import StreamInfo
from seqsense.errors import CheckpointError, SeqsenseError
from seqsense.fileio import from_json, to_json, write_atomic

CHECKPOINT_FORMAT = "seqsense-checkpoint"
CHECKPOINT_VERSION = 1


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, json) paths for a stem, a `.json`/`.safetensors` path, or a run dir (its `best`)."""
    p = Path(path)
    if p.is_dir():
        p = p / "best"
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def versions() -> dict:
    """Versions of the software that wrote a file."""
    return {"seqsense": __version__, "torch": torch.__version__, "python": platform.python_version()}


def save_checkpoint(model, path_stem: str | os.PathLike, extra: dict | None = None) -> tuple[Path, Path]:
    """Save `model` as STEM.safetensors + STEM.json atomically; returns the two paths."""
    weights_path, meta_path = checkpoint_paths(path_stem)
    if not weights_path.parent.exists():
        raise CheckpointError(f"Cannot write checkpoint '{weights_path}': folder '{weights_path.parent}' does not exist.")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = st_save(tensors)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "family": model.family,
        "config": config_to_dict(model.config),
        "streams": {k: dataclasses.asdict(v) for k, v in model.streams.items()},
        "normalization": model.normalization,
        "num_parameters": model.num_parameters(),
        "versions": versions(),
        "weights_file": weights_path.name,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "weights_bytes": len(blob),
        "extra": extra or {},
    }
    write_atomic(weights_path, blob)
    write_atomic(meta_path, to_json(meta))
    return weights_path, meta_path


def _read_json(meta_path: Path, missing: str, what: str):
    """Parsed JSON of `meta_path`; CheckpointError with `missing` if absent, naming `what` if unreadable."""
    if not meta_path.exists():
        raise CheckpointError(missing)
    try:
        return from_json(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what} '{meta_path}' is not valid JSON ({e}); the file is truncated or corrupted.") from None


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """The JSON half of a checkpoint, checked for format and version."""
    _, meta_path = checkpoint_paths(path)
    meta = _read_json(meta_path, f"Checkpoint '{meta_path}' does not exist (expected NAME.json beside NAME.safetensors).", "Checkpoint")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{meta_path}' is not a seqsense checkpoint (no format={CHECKPOINT_FORMAT!r}).")
    if int(meta.get("format_version", -1)) != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"Checkpoint '{meta_path}' has format version {meta.get('format_version')}; this seqsense reads version {CHECKPOINT_VERSION}."
        )
    for key in ("family", "config", "streams", "normalization", "weights_sha256"):
        if key not in meta:
            raise CheckpointError(f"Checkpoint '{meta_path}' lacks the {key!r} entry; the file is incomplete.")
    return meta


def read_weights(weights_path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, checked against the SHA-256 recorded beside it."""
    if not weights_path.exists():
        raise CheckpointError(f"Checkpoint weights '{weights_path}' do not exist.")
    blob = weights_path.read_bytes()
    if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
        raise CheckpointError(
            f"Checkpoint weights '{weights_path}' ({len(blob)} bytes) do not match the checksum in their JSON: "
            "the file is truncated or corrupted. Use another checkpoint (e.g. last instead of best) or retrain."
        )
    try:
        return st_load(blob)
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"Checkpoint weights '{weights_path}' cannot be read as safetensors: {e}") from None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the model saved at `path` (stem, .json, .safetensors or run dir), in eval mode."""
    from seqsense.models.base import get_model_class

    weights_path, meta_path = checkpoint_paths(path)
    meta = read_checkpoint_meta(path)
    try:
        model_cls, config_cls = get_model_class(meta["family"])
        config = config_from_dict(config_cls, meta["config"])
        # a rate that is unknown (NaN) is written as null in strict JSON: read it back as NaN
        streams = {k: StreamInfo(**{**v, "shape": tuple(v["shape"]), "rate_hz": math.nan if v.get("rate_hz") is None else v["rate_hz"]})
                   for k, v in meta["streams"].items()}
        model = model_cls(config, streams, meta["normalization"])
    except (SeqsenseError, TypeError, KeyError) as e:
        raise CheckpointError(f"Checkpoint '{meta_path}': cannot rebuild model {meta.get('family')!r}: {e}") from None
    tensors = read_weights(weights_path, meta["weights_sha256"])
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"Checkpoint '{weights_path}' does not fit model {meta['family']!r} built from its JSON: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}."
        )
    model.load_state_dict(tensors)
    model.checkpoint_meta = meta
    return model.to(device).eval()


def save_train_state(path_stem: str | os.PathLike, model, optimizer: torch.optim.Optimizer | None, info: dict) -> None:
    """Save what resuming needs: weights, optimizer tensors, RNG state (STEM.safetensors) + `info` (STEM.json)."""
    weights_path, meta_path = checkpoint_paths(path_stem)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    groups = []
    if optimizer is not None:
        sd = optimizer.state_dict()
        for i, st in sd["state"].items():
            for key, v in st.items():
                tensors[f"optim.{i}.{key}"] = torch.as_tensor(v).detach().cpu().contiguous()
        groups = sd["param_groups"]
    tensors["rng.torch"] = torch.get_rng_state()
    blob = st_save(tensors)
    meta = {
        "format": CHECKPOINT_FORMAT + "-train-state",
        "format_version": CHECKPOINT_VERSION,
        "versions": versions(),
        "param_groups": groups,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        **info,
    }
    write_atomic(weights_path, blob)
    write_atomic(meta_path, to_json(meta))


def read_train_state_info(path_stem: str | os.PathLike) -> dict:
    """The JSON half of a train state (step, config, ...), without touching the tensors."""
    _, meta_path = checkpoint_paths(path_stem)
    meta = _read_json(meta_path, f"Cannot resume: '{meta_path}' does not exist (was the run started with this --out?).", "Cannot resume: train state")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT + "-train-state" or "step" not in meta:
        raise CheckpointError(f"Cannot resume: '{meta_path}' is not a seqsense train state.")
    if "best_val" in meta and meta["best_val"] is None:
        meta["best_val"] = math.inf  # no validation loss yet: null in strict JSON
    return meta


def load_train_state(path_stem: str | os.PathLike, model, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore weights, optimizer and RNG state saved by `save_train_state`; returns its info dict."""
    weights_path, _ = checkpoint_paths(path_stem)
    meta = read_train_state_info(path_stem)
    tensors = read_weights(weights_path, meta.get("weights_sha256"))
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd)
    except RuntimeError as e:
        raise CheckpointError(f"Cannot resume from '{weights_path}': the weights do not fit this model ({e}).") from None
    if optimizer is not None and meta.get("param_groups"):
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, key = k.split(".", 2)
                state.setdefault(int(i), {})[key] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta
