"""Standard targets derived from recorded streams (gravity direction, roll/pitch, velocity, yaw rate).

A derivation turns one source stream of a log (a truth orientation or position, usually) into a new
stream, computed with numpy alone. Each is named `NAME=FUNC(SOURCE[, KEY=VALUE...])`, on the command
line (`seqsense derive LOG --add ...`) or in an import mapping's `"derive"` list:

    truth/gravity_body=gravity_body(truth/orientation)
    truth/velocity=velocity(truth/position, method=central)
    odom/yaw_rate=yaw_rate(odom/pose[3:7], order=xyzw)

`SOURCE[a:b]`, `SOURCE[i,j]` or `SOURCE[qw,qx,qy,qz]` pick fields of a wider stream by position or name.

Conventions (also stored in each derived stream's `derivation` attribute):

- **Quaternions** q = (w, x, y, z) (`order=wxyz`, the default; `order=xyzw` for ROS-style w-last
  fields) are normalized first and rotate the **body frame into the reference frame** (reference z
  up, e.g. ENU): a body vector v has reference coordinates R(q) v. NaN or zero quaternions give NaN.
- **gravity_body**: the unit vector in the body frame along which gravity pulls,
  g_body = R(q)ᵀ · (0, 0, −1). At rest an accelerometer measures −9.81 · g_body (specific force).
- **roll_pitch**: roll φ and pitch θ in radians of the ZYX Tait–Bryan decomposition
  R = Rz(ψ) · Ry(θ) · Rx(φ): φ = atan2(2(wx + yz), 1 − 2(x² + y²)), θ = asin(2(wy − zx)).
- **yaw_rate**: d/dt of the ZYX yaw ψ = atan2(2(wz + xy), 1 − 2(y² + z²)) (the heading about the
  reference z axis, not the body-frame gyro z), each step's change wrapped into [−π, π).
- **velocity**: d/dt of every source field.

Rates (`velocity`, `yaw_rate`) use `method=causal` (default: the backward difference over each sample
interval, NaN at the first sample, so a value at t uses only samples up to t) or `method=central`
(second-order differences over non-uniform sample times, one-sided at the ends). Central differences
use the next sample: they are non-causal, fine for a truth target but never for a model input.
A sample interval of zero, or a NaN neighbour, gives NaN. Derived streams are float32 vectors marked
`allow_nan`, computed in blocks (bounded memory) with the same numbers as on the whole stream.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import types
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from seqsense import __version__
from seqsense.errors import ConfigError, SeqsenseError
from seqsense.fileio import from_json, to_json

BLOCK_ROWS = 1 << 16
HALO = 1  # neighbours on each side a derivation reads (differences use one)
ORDERS = {"wxyz": "wxyz", "w-first": "wxyz", "xyzw": "xyzw", "w-last": "xyzw"}
METHODS = ("causal", "central")


@dataclasses.dataclass(frozen=True)
class Derivation:
    """One derivation function: what it reads, its options, and how it computes (t_ns, x) -> y."""

    name: str
    arg: str  # "q" (a quaternion, 4 fields) or "p" (any fields)
    options: dict  # option -> (default, valid values)
    compute: Callable  # (t_ns (N,), x (N, D) float64, options) -> (N, D_out) float64
    fields: Callable  # source field names -> output field names
    units: Callable  # source units -> output units
    convention: str
    causal: Callable  # options -> whether y[i] uses only samples up to i


@dataclasses.dataclass
class DeriveSpec:
    """One requested derived stream: `stream = function(source[fields], **options)`."""

    stream: str
    function: str
    source: str
    select: list | None = None  # field positions or names picked from the source (None: all)
    options: dict = dataclasses.field(default_factory=dict)
    frame_id: str | None = None
    units: str | None = None  # overrides the units the function gives

    def text(self) -> str:
        """The spec in the command-line form."""
        sel = f"[{','.join(str(s) for s in self.select)}]" if self.select is not None else ""
        opts = "".join(f", {k}={v}" for k, v in self.options.items())
        return f"{self.stream}={self.function}({self.source}{sel}{opts})"

    def to_dict(self) -> dict:
        """The JSON form used in mappings and provenance."""
        d = {"stream": self.stream, "function": self.function, "source": self.source}
        if self.select is not None:
            d["fields"] = list(self.select)
        if self.options:
            d["options"] = dict(self.options)
        for key in ("frame_id", "units"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


# ---- quaternion maths --------------------------------------------------------------------------

def _unit_wxyz(q: np.ndarray, order: str) -> np.ndarray:
    """(N, 4) quaternions in `order` -> normalized (w, x, y, z); NaN where the norm is 0 or NaN."""
    q = q if order == "wxyz" else q[:, [3, 0, 1, 2]]
    n = np.linalg.norm(q, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, q / n, np.nan)


def gravity_body(q_wxyz: np.ndarray) -> np.ndarray:
    """Gravity direction in the body frame, R(q)ᵀ (0, 0, −1), for unit quaternions (N, 4) -> (N, 3)."""
    w, x, y, z = q_wxyz.T
    # The third row of R(q), negated: R(q)ᵀ e_z is R's bottom row.
    return -np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=1)


def roll_pitch_yaw(q_wxyz: np.ndarray) -> np.ndarray:
    """ZYX Tait–Bryan angles (roll, pitch, yaw) in radians of unit quaternions (N, 4) -> (N, 3)."""
    w, x, y, z = q_wxyz.T
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.stack([roll, pitch, yaw], axis=1)


# ---- differences over non-uniform sample times -------------------------------------------------

def _wrap(d: np.ndarray) -> np.ndarray:
    return (d + np.pi) % (2 * np.pi) - np.pi


def rate(t_ns: np.ndarray, x: np.ndarray, method: str, wrap: bool = False) -> np.ndarray:
    """d/dt of x (N, D) at sample times t_ns (N,): backward (`causal`) or `central` differences.

    With `wrap`, each step's change is wrapped into [−π, π) first (angles). NaN where an interval is 0.
    """
    h = (np.diff(np.asarray(t_ns, np.int64)) / 1e9)[:, None]  # (N-1, 1) sample intervals, s (exact int steps)
    d = np.diff(x, axis=0)  # (N-1, D)
    if wrap:
        d = _wrap(d)
    with np.errstate(invalid="ignore", divide="ignore"):
        step = np.where(h > 0, d / np.where(h > 0, h, 1.0), np.nan)  # (N-1, D) slope of each interval
        out = np.full(x.shape, np.nan)
        if method == "causal":
            out[1:] = step
            return out
        if len(x) < 2:
            return out
        out[0], out[-1] = step[0], step[-1]  # one-sided at the ends
        h1, h2 = h[:-1], h[1:]
        # Second-order central difference on a non-uniform grid (exact for quadratics).
        out[1:-1] = (step[1:] * h1 + step[:-1] * h2) / (h1 + h2)
    return out


# ---- the registered derivations ----------------------------------------------------------------

ORDER_OPT = {"order": ("wxyz", tuple(ORDERS))}
METHOD_OPT = {"method": ("causal", METHODS)}
QUAT_CONVENTION = ("quaternion {order} (normalized) rotating the body frame into a z-up reference frame "
                   "(e.g. ENU)")

DERIVATIONS: dict[str, Derivation] = {}


def _register(d: Derivation) -> None:
    DERIVATIONS[d.name] = d


_register(Derivation(
    "gravity_body", "q", ORDER_OPT,
    lambda t, q, o: gravity_body(_unit_wxyz(q, o["order"])),
    lambda f: ["gx", "gy", "gz"], lambda u: "1 (unit vector in the body frame)",
    QUAT_CONVENTION + "; g_body = R(q)^T (0, 0, -1): the direction gravity pulls, in the body frame "
    "(an accelerometer at rest measures -9.81 g_body)",
    lambda o: True))
_register(Derivation(
    "roll_pitch", "q", ORDER_OPT,
    lambda t, q, o: roll_pitch_yaw(_unit_wxyz(q, o["order"]))[:, :2],
    lambda f: ["roll", "pitch"], lambda u: "rad",
    QUAT_CONVENTION + "; ZYX Tait-Bryan R = Rz(yaw) Ry(pitch) Rx(roll): roll = atan2(2(wx+yz), 1-2(x^2+y^2)), "
    "pitch = asin(2(wy-zx))",
    lambda o: True))
_register(Derivation(
    "yaw_rate", "q", {**ORDER_OPT, **METHOD_OPT},
    lambda t, q, o: rate(t, roll_pitch_yaw(_unit_wxyz(q, o["order"]))[:, 2:], o["method"], wrap=True),
    lambda f: ["yaw_rate"], lambda u: "rad/s",
    QUAT_CONVENTION + "; d/dt of the ZYX yaw atan2(2(wz+xy), 1-2(y^2+z^2)) about the reference z axis, "
    "steps wrapped into [-pi, pi), {method} differences over the sample times",
    lambda o: o["method"] == "causal"))
_register(Derivation(
    "velocity", "p", METHOD_OPT,
    lambda t, p, o: rate(t, p, o["method"]),
    lambda f: [f"v{n}" for n in f], lambda u: _per_second(u),
    "d/dt of each source field, {method} differences over the sample times",
    lambda o: o["method"] == "causal"))


def _per_second(units: str) -> str:
    """`m` -> `m/s`; a composite description such as `m (x, y), quaternion (...)` is quoted."""
    if not units:
        return "1/s"
    return f"{units}/s" if re.fullmatch(r"[\w^.*/-]+", units) else f"per s of the source units [{units}]"


def functions_text() -> str:
    """The derivations with their options, for help and error messages."""
    parts = []
    for d in DERIVATIONS.values():
        opts = ", ".join(f"{k}={'|'.join(dict.fromkeys(ORDERS.values()) if k == 'order' else v)} (default {dflt})"
                         for k, (dflt, v) in d.options.items())
        parts.append(f"{d.name}({d.arg}{'; ' + opts if opts else ''})")
    return "; ".join(parts)


# ---- parsing ------------------------------------------------------------------------------------

def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += 1 if ch in "[(" else -1 if ch in "])" else 0
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [p for p in out if p]


def _check_options(function: str, options: dict, where: str) -> dict:
    d = DERIVATIONS[function]
    unknown = set(options) - set(d.options)
    if unknown:
        valid = ", ".join(d.options) or "none"
        raise ConfigError(f"{where}: {function} takes no option(s) {sorted(unknown)}; valid options: {valid}.")
    out = {}
    for key, (default, valid) in d.options.items():
        value = str(options.get(key, default))
        if value not in valid:
            raise ConfigError(f"{where}: {key}={value!r} is not one of {list(valid)}.")
        out[key] = ORDERS[value] if key == "order" else value
    return out


def _parse_select(text: str) -> list:
    """`3:7` -> [3, 4, 5, 6]; `0,2` -> [0, 2]; `qw,qx` -> ['qw', 'qx']."""
    if ":" in text:
        a, _, b = text.partition(":")
        return list(range(int(a or 0), int(b)))
    return [int(s) if s.strip().lstrip("-").isdigit() else s.strip() for s in text.split(",")]


def make_spec(stream: str, function: str, source: str, select=None, options: dict | None = None,
              frame_id: str | None = None, units: str | None = None, where: str = "derive") -> DeriveSpec:
    """A checked DeriveSpec (ConfigError naming `where`, the valid functions and options)."""
    if function not in DERIVATIONS:
        raise ConfigError(f"{where}: unknown derivation {function!r}; valid: {functions_text()}.")
    if not stream or not source:
        raise ConfigError(f"{where}: a derived stream needs a name and a source stream.")
    m = re.fullmatch(r"(.+?)\[([^\]]*)\]", source.strip())
    if m:
        if select is not None:
            raise ConfigError(f"{where}: pick the source's fields once, with SOURCE[...] or \"fields\", not both.")
        try:
            source, select = m.group(1), _parse_select(m.group(2))
        except ValueError as e:
            raise ConfigError(f"{where}: bad field selection [{m.group(2)}] (use [a:b], [i,j] or [name,name]).") from e
    if select is not None and not (isinstance(select, list) and select and all(isinstance(s, (int, str)) for s in select)):
        raise ConfigError(f"{where}: \"fields\" must be a non-empty list of field positions or names, got {select!r}.")
    return DeriveSpec(stream.strip(), function, source.strip(), select,
                      _check_options(function, options or {}, where), frame_id, units)


def parse_derive_arg(text: str, where: str = "--add") -> DeriveSpec:
    """`NAME=FUNC(SOURCE[, KEY=VALUE...])[, KEY=VALUE...]` -> DeriveSpec (ConfigError on bad syntax)."""
    where = f"{where} {text!r}"
    m = re.fullmatch(r"\s*([^=\s(]+)\s*=\s*(\w+)\s*\((.*)\)\s*(?:,(.*))?", text)
    if not m:
        raise ConfigError(f"{where}: expected NAME=FUNC(SOURCE[, KEY=VALUE...]), e.g. "
                          "truth/gravity_body=gravity_body(truth/orientation); functions: " + functions_text() + ".")
    name, function, inner, trailing = m.groups()
    args = _split_top(inner) + _split_top(trailing or "")
    if not args or "=" in args[0].split("[")[0]:
        raise ConfigError(f"{where}: the first argument of {function}(...) is the source stream.")
    options = {}
    for a in args[1:]:
        key, eq, value = a.partition("=")
        if not eq:
            raise ConfigError(f"{where}: option {a!r} is not KEY=VALUE.")
        options[key.strip()] = value.strip()
    return make_spec(name, function, args[0], options=options, where=where)


DERIVE_KEYS = {"stream", "function", "source", "fields", "options", "frame_id", "units", "description"}


def spec_from_entry(entry, where: str) -> DeriveSpec:
    """A mapping's `"derive"` entry (an object, or the `--add` string form) -> DeriveSpec."""
    if isinstance(entry, str):
        return parse_derive_arg(entry, f"{where}: derive entry")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: each derive entry must be a JSON object or a string, got {entry!r}.")
    unknown = set(entry) - DERIVE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} in derive entry {entry}; "
                          f"valid keys: {sorted(DERIVE_KEYS)}.")
    missing = [k for k in ("stream", "function", "source") if not entry.get(k)]
    if missing:
        raise ConfigError(f"{where}: derive entry {entry} has no {missing}.")
    if not isinstance(entry.get("options", {}), dict):
        raise ConfigError(f"{where}: \"options\" must be an object in derive entry {entry}.")
    return make_spec(entry["stream"], entry["function"], entry["source"], entry.get("fields"),
                     entry.get("options"), entry.get("frame_id"), entry.get("units"),
                     f"{where}: derive entry for '{entry['stream']}'")


# ---- computing into a log being written ---------------------------------------------------------

def _field_columns(spec: DeriveSpec, fields: list[str], where: str) -> list[int]:
    if spec.select is None:
        return list(range(len(fields)))
    cols = []
    for s in spec.select:
        if isinstance(s, int):
            if not -len(fields) <= s < len(fields):
                raise SeqsenseError(f"{where}: field position {s} is out of range for fields {fields}.")
            cols.append(s % len(fields))
        elif s in fields:
            cols.append(fields.index(s))
        else:
            raise SeqsenseError(f"{where}: no field {s!r}; fields: {fields}.")
    return cols


def _check_order(spec: DeriveSpec, names: list[str], where: str) -> None:
    """Refuse an `order` that contradicts quaternion field names such as (qx, qy, qz, qw)."""
    low = [n.lower() for n in names]
    if sorted(low) not in (["qw", "qx", "qy", "qz"], ["w", "x", "y", "z"]):
        return
    named = "wxyz" if low[0].endswith("w") else "xyzw" if low[-1].endswith("w") else None
    if named and named != spec.options["order"]:
        raise SeqsenseError(f"{where}: the fields {names} are a {'w-first' if named == 'wxyz' else 'w-last'} "
                            f"quaternion but order={spec.options['order']}; add order={named}.")


def derivation_attrs(spec: DeriveSpec, source_fields: list[str]) -> dict:
    """What a derived stream records about how it was made (its `derivation` attribute)."""
    d = DERIVATIONS[spec.function]
    return {"spec": spec.text(), "function": spec.function, "source": spec.source, "source_fields": source_fields,
            "options": spec.options, "convention": d.convention.format(**spec.options),
            "causal": d.causal(spec.options), "seqsense_version": __version__}


def derive_into(episode, group: h5py.Group, spec: DeriveSpec, where: str) -> bool:
    """Write the stream `spec` asks for into `episode` (an EpisodeWriter whose HDF5 group is `group`).

    `where` names the log and episode for errors. Returns False (writing nothing) when the stream is
    already there with the same derivation; SeqsenseError when the source is missing or unfit.
    """
    d = DERIVATIONS[spec.function]
    here = f"{where} stream '{spec.source}'"
    target = group.get(spec.stream)
    if target is not None:
        made = from_json(target.attrs["derivation"]) if "derivation" in target.attrs else None
        if isinstance(made, dict) and made.get("spec") == spec.text():
            return False
        raise SeqsenseError(f"{where}: stream '{spec.stream}' already exists; name the derived stream otherwise.")
    src = group.get(spec.source)
    if src is None or not isinstance(src, h5py.Group) or "kind" not in src.attrs:
        from seqsense.log.reader import find_stream_names

        raise SeqsenseError(f"{where}: no stream '{spec.source}' to derive '{spec.stream}' from; "
                            f"streams: {find_stream_names(group)}.")
    kind = str(src.attrs["kind"])
    if kind not in ("vector", "scalar"):
        raise SeqsenseError(f"{here}: {spec.function} needs a numeric vector stream, got a {kind} stream.")
    fields = from_json(src.attrs["fields"]) if kind == "vector" and "fields" in src.attrs else None
    fields = fields or ([spec.source.rsplit("/", 1)[-1]] if kind == "scalar" else
                        [f"x{i}" for i in range(src["data"].shape[1])])
    cols = _field_columns(spec, fields, here)
    names = [fields[c] for c in cols]
    if d.arg == "q":
        if len(cols) != 4:
            raise SeqsenseError(f"{here}: {spec.function} needs a quaternion of 4 fields, got {len(cols)} {names}; "
                                "pick four with SOURCE[a:b] or SOURCE[name,...].")
        _check_order(spec, names, here)
    t = src["t"][()]
    if len(t) == 0:
        raise SeqsenseError(f"{here}: the source stream has no samples.")
    out_fields = d.fields(names)
    n, dim = len(t), len(out_fields)
    sw = episode.stream(
        spec.stream, "vector", (dim,), fields=out_fields,
        units=spec.units if spec.units is not None else d.units(str(src.attrs.get("units", ""))),
        frame_id=spec.frame_id if spec.frame_id is not None else str(src.attrs.get("frame_id", "")),
        source=f"derived: {spec.text()}", rate_hz=float(src.attrs.get("rate_hz", float("nan"))),
        allow_nan=True, chunk_samples=int(min(n, max(64, 65536 // (4 * dim)))),
        attrs={"derivation": derivation_attrs(spec, names)})
    data = src["data"]
    for i0 in range(0, n, BLOCK_ROWS):
        i1 = min(n, i0 + BLOCK_ROWS)
        a, b = max(0, i0 - HALO), min(n, i1 + HALO)  # neighbours, so block edges match the whole-stream result
        x = np.asarray(data[a:b], np.float64).reshape(b - a, -1)[:, cols]
        y = d.compute(t[a:b], x, spec.options)  # (b - a, dim)
        sw.extend(t[i0:i1], y[i0 - a : i1 - a].astype(np.float32))
    sw.flush()
    return True



def derive_episode(episode, group: h5py.Group, specs: list[DeriveSpec], where: str) -> list[str]:
    """Write every derived stream of `specs` into one episode; the names written (not already there)."""
    return [s.stream for s in specs if derive_into(episode, group, s, where)]


def derive_log(log: str | os.PathLike, out: str | os.PathLike, specs: list[DeriveSpec]) -> dict[str, list[str]]:
    """Copy the log `log` to `out` with the derived streams of `specs` added to every episode.

    The new log is written to a temporary file beside `out` and renamed over it only when complete, so
    `log` is never modified (even when `out` is `log`: the rename replaces it whole). Returns
    {episode: [streams written]}; SeqsenseError names the file, episode and stream on bad input.
    """
    from seqsense.log.format import EPISODES_GROUP
    from seqsense.log.reader import open_log
    from seqsense.log.writer import EpisodeWriter

    log, out = Path(log), Path(out)
    if not specs:
        raise ConfigError("nothing to derive: give --add NAME=FUNC(SOURCE) or a --mapping file with a \"derive\" list.")
    names = [s.stream for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"each derived stream needs its own name; got {names}.")
    open_log(log).close()  # a readable seqsense log of a known version, or a clear LogFormatError
    if not out.parent.exists():
        raise SeqsenseError(f"Cannot write log '{out}': folder '{out.parent}' does not exist.")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    written: dict[str, list[str]] = {}
    try:
        shutil.copyfile(log, tmp)
        with h5py.File(tmp, "r+") as f:
            ref = types.SimpleNamespace(path=out)  # what EpisodeWriter names in its messages
            for name in sorted(f[EPISODES_GROUP]):
                g = f[EPISODES_GROUP][name]
                written[name] = derive_episode(EpisodeWriter(ref, g, name), g, specs, f"Log '{log}' episode '{name}'")
            prov = from_json(f.attrs.get("provenance", "{}")) or {}
            prov.setdefault("derived", []).append({"by": "seqsense derive", "input": str(log),
                                                   "seqsense_version": __version__,
                                                   "specs": [s.to_dict() for s in specs]})
            f.attrs["provenance"] = to_json(prov, indent=None, sort_keys=True)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written
