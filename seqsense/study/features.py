"""The cell's shared per-frame encoder and its cached features.

A camera cell trains one framewise model on the frames (its target: the cell's `encoder_target`, a
per-frame observable such as `truth/position` when the cell's own target cannot be seen in one
frame). Its frame encoder (`TickEncoder.frames`, the CNN before any mixing with age or other
streams) is then run once over every frame of the cell's logs, and a *feature log* is written in
which each image input is replaced by a vector stream of the same name and timestamps holding those
features (dropped frames stay dropped, jittered stamps stay jittered). Every other stream, truth
included, and the provenance are copied unchanged, so families, twins, consumers and oracles read
the feature log exactly as they would the original.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from seqsense.log import open_log
from seqsense.log.writer import LogWriter

STREAM_ATTRS = ("units", "frame_id", "source", "rate_hz", "allow_nan")
BATCH = 512  # frames encoded at once


def image_inputs(log_path: Path, inputs) -> list[str]:
    """The cell's input streams that are images (first episode of the log)."""
    ep = open_log(log_path).episodes()[0]
    return [s for s in inputs if ep.stream(s).kind == "image"]


def frame_encoders(model) -> dict[str, torch.nn.Module]:
    """Input stream -> the model's per-frame encoder module (the CNN of its TickEncoder)."""
    enc = model.encoder
    return {s: enc.frames[f"s{i}"] for i, s in enumerate(enc.inputs) if f"s{i}" in enc.frames}


@torch.inference_mode()
def _encode(module: torch.nn.Module, frames) -> np.ndarray:
    out = [module(torch.as_tensor(frames[a : a + BATCH])).numpy() for a in range(0, len(frames), BATCH)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def write_feature_log(model, source: Path, dest: Path) -> Path:
    """Copy log `source` to `dest` with each image input the model encodes replaced by its features."""
    model.eval()
    encoders = frame_encoders(model)
    log = open_log(source)
    with LogWriter(dest, provenance=log.provenance) as out:
        for ep in log.episodes():
            ew = out.episode(ep.name, provenance=ep.provenance)
            for name in ep.stream_names:
                st = ep.stream(name)
                attrs = {k: getattr(st, k) for k in STREAM_ATTRS}
                if name in encoders:
                    feats = _encode(encoders[name], st.data)
                    fields = [f"feature{i}" for i in range(feats.shape[1])]
                    ew.write_stream(name, "vector", st.t, feats, fields=fields, **{**attrs, "units": "", "source": f"frame encoder of {name}"})
                elif st.kind == "image":
                    continue  # frames nobody reads are left out of the feature log
                else:
                    extra = {k: v for k, v in st.group.attrs.items() if k not in STREAM_ATTRS + ("kind", "fields")}
                    ew.write_stream(name, st.kind, st.t, st.data[()], fields=st.fields, attrs=extra, **attrs)
    return dest
