"""Writing scenario episodes to a seqsense log: `generate()` is what `seqsense generate` calls."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from seqsense.errors import ConfigError
from seqsense.log.format import KIND_DTYPES
from seqsense.log.writer import VECTOR_CHUNK_BYTES
from seqsense.scenarios.base import RENDER_BLOCK, ImageStream, Scenario, episode_rng, get_scenario, iter_blocks, resolve_knobs

COMPRESSIONS = (None, "lzf", "gzip")


def make_scenario(
    name: str, knobs: dict[str, Any] | None = None, seed: int = 0, duration_s: float | None = None
) -> Scenario:
    """An instance of scenario `name` with `knobs` validated (defaults filled) for one file."""
    cls = get_scenario(name)
    resolved = resolve_knobs(cls, knobs)
    duration_s = cls.default_duration_s if duration_s is None else duration_s
    if not isinstance(duration_s, (int, float)) or not np.isfinite(duration_s) or not 0.5 <= duration_s <= 86400:
        raise ConfigError(f"Scenario '{name}': duration_s={duration_s!r} must be a number of seconds in [0.5, 86400].")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ConfigError(f"Scenario '{name}': seed={seed!r} must be a non-negative integer.")
    return cls(resolved, int(seed), float(duration_s))


def file_provenance(sc: Scenario, episodes: int) -> dict:
    """The file provenance: scenario, knobs (defaults filled), seed, duration and the scenario's keys."""
    prov = {
        "generator": f"seqsense generate {sc.name}",
        "scenario": sc.name,
        "knobs": dict(sc.k),
        "seed": sc.seed,
        "duration_s": sc.duration_s,
        "episodes": int(episodes),
    }
    prov.update(sc.provenance())
    for key in ("inputs", "target", "optimal", "hazard"):
        if key not in prov:
            raise RuntimeError(f"scenario {sc.name!r} provenance lacks {key!r}")
    return prov


def write_episode(log_writer, sc: Scenario, index: int, compression: str | None = None) -> None:
    """Generate episode `index` of `sc` and write it as 'ep_{index:03d}'."""
    data = sc.episode(index, episode_rng(sc.seed, index))
    ep = log_writer.episode(f"ep_{index:03d}", provenance={"index": index, **data.provenance})
    source = f"seqsense generate {sc.name}"
    for s in data.streams:
        if isinstance(s, ImageStream):
            sw = ep.stream(
                s.name, "image", s.shape, units=s.units, frame_id=s.frame_id, source=source,
                rate_hz=s.rate_hz, compression=compression,
            )
            for i0, i1 in iter_blocks(len(s.t_ns), RENDER_BLOCK):
                sw.extend(s.t_ns[i0:i1], s.render(i0, i1))
        else:
            ep.write_stream(
                s.name, s.kind, np.asarray(s.t_ns, np.int64), s.data, units=s.units, fields=s.fields,
                frame_id=s.frame_id, source=source, rate_hz=s.rate_hz, chunk_samples=_chunk(s),
            )
    ep.flush()


def _chunk(s) -> int:
    """The writer's default chunk length, but no longer than the stream: short streams stay small on disk."""
    sample_bytes = max(1, int(np.prod(np.shape(s.data)[1:], dtype=np.int64)) * KIND_DTYPES[s.kind].itemsize)
    return max(1, min(len(s.t_ns), max(64, VECTOR_CHUNK_BYTES // sample_bytes)))


def generate(
    scenario: str,
    out: str | Path,
    *,
    episodes: int = 8,
    seed: int = 0,
    duration_s: float | None = None,
    knobs: dict[str, Any] | None = None,
    compression: str | None = None,
    progress: bool = False,
) -> Path:
    """Generate `episodes` episodes of `scenario` into the log `out` (atomic); returns its path."""
    from seqsense.log import LogWriter

    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or not 1 <= episodes <= 100_000:
        raise ConfigError(f"episodes={episodes!r} must be an integer in [1, 100000].")
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression={compression!r}; valid: none, lzf, gzip.")
    sc = make_scenario(scenario, knobs, seed, duration_s)
    prov = file_provenance(sc, episodes)
    with LogWriter(out, provenance=prov) as w:
        indices = range(int(episodes))
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc=f"generate {scenario}", unit="episode", file=sys.stderr)
        for i in indices:
            write_episode(w, sc, i, compression)
    return Path(out)
