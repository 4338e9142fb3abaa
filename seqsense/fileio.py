"""Atomic file writes and the one JSON policy of seqsense: every output appears whole or not at all.

JSON policy. Everything seqsense writes as JSON (checkpoints, train states, export manifests, eval
summaries, study results, the JSON attributes of logs) is strict JSON that any parser reads:
`to_json` writes NaN and +-inf as null (never the non-standard `NaN`/`Infinity` literals), numpy
values as Python ones and anything else JSON cannot hold (paths, ...) as its `str`. `from_json` reads
it back unchanged; it still accepts the literals older files hold, reading them as null too, so an
old file reads exactly as it would have been written today.

A null where a number is due means "not a number" or "unbounded". Readers that know a field's type
restore the float: a config field typed `float` (not `float | None`) reads null back as inf, its
"unbounded" value (`max_age_s=inf`: no age limit), see `seqsense.config.config_from_dict`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsync and os.replace.

    A reader never sees a half-written file, and a crash leaves the previous file (if any) intact.
    The file keeps the mode of the one it replaces (0644 for a new one).
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(x):
    """NaN/inf -> None, numpy -> python, recursively: what strict JSON can hold."""
    import math

    import numpy as np

    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Strict JSON (NaN and inf as null) through a temporary file and a rename."""
    write_atomic(path, to_json(data))


def to_json(obj, indent: int | None = 1, sort_keys: bool = False) -> str:
    """Strict JSON text of `obj`: NaN/inf as null, numpy as Python, other objects as their `str`."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False, default=str)


def from_json(text: str | bytes):
    """Parse JSON written by `to_json`; the NaN/Infinity literals of older files read as None."""
    return json.loads(text, parse_constant=lambda _literal: None)
