"""The self-check of an export: onnx checker, then onnxruntime against the torch predictor, tick by tick.

Both predictors take the same dataset ticks through their `step_tick` adapter (`seqsense.predictor`),
so the check compares the graph with the model; the causal sampling of `step(t_ns, observations)`
is one shared implementation (`seqsense.ticks`), tested against the dataset on its own.

Ticks come from the training logs named in the checkpoint's provenance when they are reachable (the
held-out episodes first), else from `random_ticks`: random but valid ticks (images uint8, vectors
around the training statistics, mostly-valid flags, small ages, increasing times at the clock's rate).
Episodes are lists of ticks; both predictors are reset at the start of each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqsense.errors import SeqsenseError

PARITY_TICKS = 300
PARITY_RTOL = 1e-4
PARITY_ATOL = 1e-6  # absolute floor for outputs near zero (float32 rounding)


def _episode_refs(meta: dict) -> list[tuple[str, str]]:
    """(file, episode) pairs of the training logs, held-out episodes first; [] when none is reachable."""
    from seqsense.dataset import episode_refs

    extra = meta.get("extra", {}) or {}
    paths = [p for p in extra.get("data", []) if Path(p).exists()]
    if not paths:
        return []
    try:
        refs = episode_refs(paths)
    except SeqsenseError:
        return []
    val = set((extra.get("split") or {}).get("val", []))
    return sorted(refs, key=lambda r: f"{Path(r[0]).name}:{r[1]}" not in val)


def training_ticks(model, meta: dict, n: int) -> tuple[list[list[dict]], str]:
    """Up to `n` ticks from the training logs as episodes of tick dicts, and where they came from."""
    from seqsense.dataset import WindowDataset

    refs = _episode_refs(meta)
    if not refs:
        return [], ""
    try:
        ds = WindowDataset(refs, model.config.window_spec(window=1))
    except SeqsenseError:
        return [], ""
    episodes, total = [], 0
    for k in range(len(ds.episodes)):
        ticks = []
        for tick in ds.iter_ticks(k):
            ticks.append(tick)
            total += 1
            if total >= n:
                break
        episodes.append(ticks)
        if total >= n:
            break
    return episodes, f"{len(episodes)} episode(s) of the training logs"


def random_ticks(model, n: int, seed: int = 0, episodes: int = 2) -> list[list[dict]]:
    """`n` random-but-valid ticks for `model`'s inputs, split into `episodes` episodes."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    rate = cfg.rate_hz or model.streams[cfg.clock or cfg.target].rate_hz
    period_ns = int(1e9 / rate) if rate and np.isfinite(rate) and rate > 0 else 50_000_000
    out = []
    for e in range(episodes):
        t, ticks = 10**9 * (e + 1), []
        for i in range(max(1, n // episodes)):
            t += 0 if i == 0 else int(period_ns * rng.uniform(0.5, 2.0))
            tick = {"t_ns": np.int64(t), "dt_s": np.float32(0.0 if i == 0 else (t - ticks[-1]["t_ns"]) / 1e9)}
            for s in cfg.inputs:
                tick.update(_random_stream(rng, s, model.streams[s], model.normalization.get(s), int(cfg.packed.get(s, 0))))
            ticks.append(tick)
        out.append(ticks)
    return out


def _random_stream(rng, s: str, info, stats: dict | None, k: int) -> dict:
    shape = tuple(info.shape)
    lead = (k,) if k else ()
    if info.kind == "image":
        x = rng.integers(0, 256, lead + shape, dtype=np.uint8)
    else:
        mean = np.asarray(stats["mean"], np.float32).reshape(shape) if stats else 0.0
        std = np.asarray(stats["std"], np.float32).reshape(shape) if stats else 1.0
        x = (mean + std * rng.standard_normal(lead + shape)).astype(np.float32)
    if k:
        mask = rng.random(k) < 0.8
        return {s: np.where(mask.reshape((k,) + (1,) * len(shape)), x, 0).astype(x.dtype),
                f"{s}_age_s": np.where(mask, rng.uniform(0, 0.05, k), 0).astype(np.float32), f"{s}_mask": mask}
    valid = bool(rng.random() < 0.9)
    return {s: x if valid else np.zeros_like(x), f"{s}_age_s": np.float32(rng.uniform(0, 0.1) if valid else 0.0),
            f"{s}_valid": np.bool_(valid)}


def compare(a, b) -> tuple[float, float, bool]:
    """(max abs error, max relative error, within tolerance) of runtime output `a` against torch output `b`."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    diff = np.abs(a - b)
    rel = diff / np.maximum(np.abs(b), 1e-6)
    ok = bool(np.all(diff <= PARITY_RTOL * np.abs(b) + PARITY_ATOL)) and np.isfinite(a).all() == np.isfinite(b).all()
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), ok


def run_parity(model, predictor, episodes: list[list[dict]]) -> dict:
    """Step the torch predictor and a runtime predictor through `episodes`; error figures and the first failure."""
    torch_pred = model.predictor()
    worst_abs, worst_rel, ticks, failure = 0.0, 0.0, 0, None
    for e, ticks_e in enumerate(episodes):
        torch_pred.reset()
        predictor.reset()
        for i, tick in enumerate(ticks_e):
            want = torch_pred.step_tick(tick)
            got = predictor.step_tick(tick)
            pairs = [(got.probs, want.probs)] if want.probs is not None else [(got.mean, want.mean), (got.var, want.var)]
            for a, b in pairs:
                ea, er, ok = compare(a, b)
                worst_abs, worst_rel = max(worst_abs, ea), max(worst_rel, er)
                if not ok and failure is None:
                    failure = f"episode {e} tick {i}: runtime {np.asarray(a).tolist()} vs torch {np.asarray(b).tolist()}"
            ticks += 1
    return {"ticks": ticks, "episodes": len(episodes), "max_abs_err": worst_abs, "max_rel_err": worst_rel,
            "rtol": PARITY_RTOL, "atol": PARITY_ATOL, "failure": failure}


def check_export(model, folder: Path, episodes: list[list[dict]], rtol: float = PARITY_RTOL) -> dict:
    """onnx checker + parity run on `episodes`; SeqsenseError when the graph is invalid or disagrees."""
    import onnx

    from seqsense import runtime

    try:
        onnx.checker.check_model(str(Path(folder) / runtime.MODEL_FILE), full_check=True)
    except Exception as e:  # onnx raises ValidationError and friends
        raise SeqsenseError(f"Export of {model.family}: the ONNX checker rejects the graph: {str(e).splitlines()[0]}") from None
    report = run_parity(model, runtime.load(folder), episodes)
    if report["failure"] is not None:
        raise SeqsenseError(
            f"Export of {model.family}: onnxruntime disagrees with the torch predictor beyond rtol={rtol} "
            f"(max abs error {report['max_abs_err']:.3g}, max rel error {report['max_rel_err']:.3g}) at {report['failure']}. "
            "Nothing was written; report this with the run dir.")
    return {k: v for k, v in report.items() if k != "failure"}
