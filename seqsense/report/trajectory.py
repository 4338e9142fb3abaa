"""The data of a cell's trajectory plot, read from its saved predictions (`predictions.h5`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqsense.log.format import NS_PER_S


def trajectory_example(predictions: Path, dataset) -> dict:
    """Truth and every model's predictions over the first test episode (read from the saved
    predictions log), with the occluded / distractor marks and slide cuts, for the trajectory plot."""
    from seqsense.evaluate.saved import load_predictions

    saved = load_predictions(predictions)
    name = dataset.episodes[0][1]
    per_model = {m: next(ep for ep in eps.values() if ep["source_episode"] == name) for m, eps in saved.items()}
    first = next(iter(per_model.values()))
    episode = dataset.index(0).episode
    t = first["t_s"]
    marks = {}
    for stream in ("truth/occluded", "truth/distractor"):
        if episode.has_stream(stream):
            st = episode.stream(stream)
            i = np.clip(np.searchsorted(st.t / NS_PER_S, t, side="right") - 1, 0, None)
            marks[stream.split("/")[1]] = st.data[()][i].astype(int)
    cuts = episode.stream("truth/cut").t / NS_PER_S if episode.has_stream("truth/cut") else None
    y = np.asarray(first["truth"], float).reshape(len(t), -1)
    return {
        "episode": name,
        "t_s": t,
        "truth": np.where(np.asarray(first["valid"], bool)[:, None], y, np.nan),
        "occluded": marks.get("occluded"),
        "distractor": marks.get("distractor"),
        "cuts_s": cuts,
        "predictions": {m: _on_ticks(ep, t) for m, ep in per_model.items()},
    }


def _on_ticks(ep: dict, t: np.ndarray) -> np.ndarray:
    """A model's predictions (T, D) at the plot's tick times `t` (s): as they are on the same clock, else
    the latest prediction at or before each tick (NaN before its first), for a model on a clock of its own."""
    mean = np.asarray(ep["mean"], float).reshape(len(ep["t_s"]), -1)
    own = np.asarray(ep["t_s"], float)
    if len(own) == len(t) and np.array_equal(own, t):
        return mean
    i = np.searchsorted(own, t, side="right") - 1
    return np.where((i >= 0)[:, None], mean[np.clip(i, 0, None)], np.nan)
