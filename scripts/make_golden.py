"""Regenerate the golden exports under tests/golden/ (one tiny untrained model per family, plus frames).

    python scripts/make_golden.py [--out tests/golden]

Each case folder holds the tiny export (`model.onnx`, `manifest.json`), the torch checkpoint it came
from (`checkpoint.safetensors` + `checkpoint.json`), the input ticks (`ticks.npz`, keys
`EPISODE:KEY` stacked over ticks) and the torch predictor's outputs on them (`expected.npz`, keys
`EPISODE:mean`, `EPISODE:var` or `EPISODE:probs`). Models are built from fixed seeds, so rerunning
gives the same numbers up to library versions; regenerate only when a change of outputs is intended,
and say why in the commit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

# name -> (family, inputs {stream: (kind, shape)}, target (kind, shape), config extras)
CASES = {
    "framewise": ("framewise", {"imu": ("vector", (2,))}, ("vector", (2,)), {}),
    "gp": ("gp", {"imu": ("vector", (2,))}, ("vector", (2,)), {}),
    "kalman": ("kalman", {"imu": ("vector", (2,))}, ("vector", (2,)), {"dynamics": "cv"}),
    "rnn": ("rnn", {"imu": ("vector", (2,))}, ("vector", (2,)), {}),
    "transformer": ("transformer", {"imu": ("vector", (2,))}, ("vector", (2,)), {"context": 4}),
    "ekf": ("ekf", {"gyro": ("vector", (3,)), "accel": ("vector", (3,))}, ("vector", (3,)), {}),
    "kalmannet": ("kalmannet", {"gyro": ("vector", (3,)), "accel": ("vector", (3,))}, ("vector", (3,)), {}),
    "rnn_frames_label": ("rnn", {"camera": ("image", (16, 16, 1)), "imu": ("vector", (2,))}, ("label", ()), {"num_classes": 3}),
}
TICKS = 24  # per case, in two episodes


def build_model(name: str, seed: int = 0):
    """The tiny, seeded, untrained model of golden case `name`."""
    import torch

    from seqsense.config import apply_overrides
    from seqsense.dataset import StreamInfo
    from seqsense.models import MODELS

    family, inputs, (tkind, tshape), extra = CASES[name]
    model_cls, config_cls = MODELS[family]
    streams = {s: StreamInfo(kind, shape, "m/s" if kind == "vector" else "", rate_hz=20.0) for s, (kind, shape) in inputs.items()}
    streams["truth/pos"] = StreamInfo(tkind, tshape, "m", rate_hz=20.0)
    config = apply_overrides(config_cls(), {"inputs": tuple(inputs), "target": "truth/pos", "hidden": 8,
                                            "frame_channels": 2, "window": 8, **extra})
    norm = {s: {"mean": [0.1] * shape[0], "std": [0.5] * shape[0]} for s, (kind, shape) in inputs.items() if kind == "vector"}
    if tkind == "vector":
        norm["target"] = {"mean": [0.5] * tshape[0], "std": [0.2] * tshape[0]}
    torch.manual_seed(seed)
    return model_cls(config, streams, norm).eval()


def episodes_to_npz(episodes: list[list[dict]]) -> dict[str, np.ndarray]:
    """Episodes of tick dicts -> flat arrays `EPISODE:KEY` stacked over ticks."""
    return {f"{e}:{k}": np.stack([np.asarray(t[k]) for t in ticks]) for e, ticks in enumerate(episodes) for k in ticks[0]}


def npz_to_episodes(arrays) -> list[list[dict]]:
    """The inverse of `episodes_to_npz`."""
    eps: dict[int, dict[str, np.ndarray]] = {}
    for key in arrays.keys():
        e, k = key.split(":", 1)
        eps.setdefault(int(e), {})[k] = arrays[key]
    out = []
    for e in sorted(eps):
        n = len(eps[e]["t_ns"])
        out.append([{k: v[i] for k, v in eps[e].items()} for i in range(n)])
    return out


def make_case(name: str, out: Path) -> None:
    """Write golden case `name` into `out/name`."""
    from seqsense.export import export_model
    from seqsense.export.check import random_ticks
    from seqsense.models.checkpoint import save_checkpoint

    model = build_model(name)
    episodes = random_ticks(model, TICKS, seed=1)
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    export_model(model, folder, {"extra": {"golden_case": name}}, parity_ticks=episodes, log=lambda m: None)
    save_checkpoint(model, folder / "checkpoint", extra={"golden_case": name})
    np.savez(folder / "ticks.npz", **episodes_to_npz(episodes))
    expected = {}
    pred = model.predictor()
    for e, ticks in enumerate(episodes):
        pred.reset()
        outs = [pred.step_tick(t) for t in ticks]
        heads = ("probs",) if outs[0].probs is not None else ("mean", "var")
        for h in heads:
            expected[f"{e}:{h}"] = np.stack([getattr(o, h) for o in outs])
    np.savez(folder / "expected.npz", **expected)
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{name}: {size / 1024:.0f} KB in {folder}")


def main(argv: list[str] | None = None) -> int:
    """Regenerate every golden case."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "golden"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        make_case(name, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
