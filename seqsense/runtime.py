"""Run an exported predictor (`seqsense export`) with numpy + onnxruntime only: no torch, no training code.

    from seqsense import runtime
    pred = runtime.load("exports/rnn")          # checks the manifest against the graph
    pred.reset()                                 # start of a log
    p = pred.step(t_ns, {"imu": sample, "camera": frame_or_None})
    p.mean, p.var                                # (D,) in target units; p.probs (K,) for labels

`step(t_ns, observations)` takes the tick time and, for **every** input stream of the manifest, the
latest sample (`None` when no new sample arrived since the previous tick). It computes `dt_s` from
successive `t_ns` itself (0 at the first tick after `reset()`) and builds the tick the model was
trained on (`seqsense.predictor`):

- latest-mode stream s: a new sample gets age `observations["s_age_s"]` (default 0) and validity
  `observations["s_valid"]` (default True). `None` keeps the previous sample and its age grows by
  `dt_s`, as the dataset's causal sampling does; once the age passes the manifest's `max_age_s`, or
  before the first sample, the stream is invalid (value zeroed, age 0). `s_valid=False` marks the
  stream invalid at this tick and forgets the held sample.
- packed stream s (K slots): the samples since the previous tick, (k, *shape) with k <= K, oldest
  first (the newest K are kept when k > K); optional `s_age_s` (k,) and `s_mask` (k,). `None` or
  k = 0 gives an empty tick (all slots masked).
- **NaN or Inf**: a latest-mode sample holding any non-finite value is rejected as if it were `None`
  (the held sample stays, its age grows); a packed row holding one is masked out. Rejections are
  counted in `predictor.rejected[stream]`.

Wrong input is an `ObservationError` naming the stream, the expected shape and dtype: a missing
stream key, a wrong shape, a non-numeric dtype, or a non-uint8 image. Keys not naming an input
stream (e.g. a dataset tick's `target`) are ignored. A folder whose manifest does not match its
graph, a truncated graph, or an export from a newer format is a `CheckpointError` from `load`.
onnxruntime runs with one intra-op thread by default (robot loops own their cores).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from seqsense.errors import CheckpointError, SeqsenseError
from seqsense.predictor import Prediction

EXPORT_FORMAT = "seqsense-export"
EXPORT_FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
NS_PER_S = 1_000_000_000
ORT_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int64": "tensor(int64)", "bool": "tensor(bool)",
             "uint8": "tensor(uint8)", "int32": "tensor(int32)"}


class ObservationError(SeqsenseError, ValueError):
    """An observation passed to `step` that does not fit the manifest (missing, wrong shape or dtype)."""


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an export folder, checked for format and version."""
    d = Path(folder)
    if not d.is_dir():
        raise CheckpointError(f"Export folder '{d}' does not exist; create one with `seqsense export RUN_DIR --out {d}`.")
    path = d / MANIFEST_FILE
    if not path.exists():
        raise CheckpointError(f"Export folder '{d}' has no {MANIFEST_FILE}; it is not a seqsense export (or the export did not finish).")
    try:
        man = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{path}' is not valid JSON ({e}); the file is truncated or corrupted. Export again.") from None
    if not isinstance(man, dict) or man.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"'{path}' is not a seqsense export manifest (no format={EXPORT_FORMAT!r}).")
    version = man.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"'{path}': format_version {version!r} is not a positive integer.")
    if version > EXPORT_FORMAT_VERSION:
        raise CheckpointError(f"'{path}' is export format version {version}, newer than this runtime reads "
                              f"(version {EXPORT_FORMAT_VERSION}); upgrade seqsense on this machine, or export with this version.")
    for key in ("graph", "streams", "target", "clock", "family"):
        if key not in man:
            raise CheckpointError(f"'{path}' lacks the {key!r} entry; the manifest is incomplete. Export again.")
    return man


def _open_session(folder: Path, man: dict, threads: int, providers):
    import onnxruntime as ort

    graph = man["graph"]
    path = folder / graph.get("file", MODEL_FILE)
    if not path.exists():
        raise CheckpointError(f"Export folder '{folder}' has no graph '{path.name}'. Export again.")
    blob = path.read_bytes()
    if graph.get("sha256") and hashlib.sha256(blob).hexdigest() != graph["sha256"]:
        raise CheckpointError(f"Graph '{path}' ({len(blob)} bytes) does not match the checksum in {MANIFEST_FILE}: "
                              "the file is truncated, corrupted or was replaced. Export again.")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        sess = ort.InferenceSession(blob, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise CheckpointError(f"onnxruntime cannot load graph '{path}': {str(e).splitlines()[0]}") from None
    meta = sess.get_modelmeta().custom_metadata_map
    gv = meta.get("seqsense_export_format_version")
    if gv is not None and gv != str(man["format_version"]):
        raise CheckpointError(f"Graph '{path}' is export format version {gv} but {MANIFEST_FILE} says {man['format_version']}; "
                              "the two files come from different exports. Export again.")
    _check_signature(path, sess, graph)
    return sess


def _check_signature(path: Path, sess, graph: dict) -> None:
    """CheckpointError unless the graph's inputs and outputs are exactly those the manifest lists."""
    want_in = {r["name"]: r for r in graph["inputs"]} | {s["input"]: s for s in graph["state"]}
    want_out = {r["name"]: r for r in graph["outputs"]} | {s["output"]: s for s in graph["state"]}
    for kind, have, want in (("input", sess.get_inputs(), want_in), ("output", sess.get_outputs(), want_out)):
        names = {a.name for a in have}
        if names != set(want):
            raise CheckpointError(
                f"Graph '{path}' does not match {MANIFEST_FILE}: graph {kind}s {sorted(names)}, manifest {kind}s {sorted(want)} "
                f"(missing in graph: {sorted(set(want) - names)}, not in manifest: {sorted(names - set(want))}). Export again.")
        for a in have:
            w = want[a.name]
            if list(a.shape) != list(w["shape"]) or a.type != ORT_TYPES.get(w["dtype"]):
                raise CheckpointError(
                    f"Graph '{path}' {kind} '{a.name}' is {a.type} {list(a.shape)} but {MANIFEST_FILE} says "
                    f"{w['dtype']} {list(w['shape'])}. The manifest was edited or belongs to another export; export again.")


class _Stream:
    """One input stream's slot in the graph feed and what is held of it between ticks."""

    def __init__(self, name: str, info: dict, feed: dict):
        self.name = name
        self.shape = tuple(info["shape"])
        self.image = info["kind"] == "image"
        self.dtype = np.uint8 if self.image else np.float32
        self.max_age_s = float("inf") if info.get("max_age_s") is None else float(info["max_age_s"])
        self.packed_k = int(info["packed_k"]) if info.get("mode") == "packed" else 0
        lead = (self.packed_k,) if self.packed_k else ()
        self.value = feed[name].reshape(lead + self.shape)  # views into the feed arrays (batch axis dropped)
        self.age = feed[f"{name}_age_s"].reshape(-1)  # (1,) or (K,)
        self.flag = feed[f"{name}_mask" if self.packed_k else f"{name}_valid"].reshape(-1)
        self.has = False
        self.held_age = 0.0

    def expected(self) -> str:
        shape = ((self.packed_k,) if self.packed_k else ()) + self.shape
        lead = "(k <= %d, %s)" % (self.packed_k, ", ".join(map(str, self.shape))) if self.packed_k else str(shape)
        return f"shape {lead} dtype {'uint8' if self.image else 'float32 (any real dtype is cast)'}"

    def array(self, x) -> np.ndarray:
        """`x` as an array of this stream's dtype, checked; ObservationError otherwise."""
        a = np.asarray(x)
        if self.image and a.dtype != np.uint8:
            raise ObservationError(f"Stream '{self.name}': image samples must be uint8 (H, W, C), got dtype {a.dtype}; expected {self.expected()}.")
        if not self.image and a.dtype.kind not in "fiu":
            raise ObservationError(f"Stream '{self.name}': got dtype {a.dtype}, not a real number type; expected {self.expected()}.")
        ok = a.shape[1:] == self.shape and a.ndim >= 1 if self.packed_k else a.shape == self.shape or (a.size == 1 and self.shape in ((), (1,)))
        if not ok:
            raise ObservationError(f"Stream '{self.name}': got shape {a.shape}; expected {self.expected()}.")
        return a.reshape(((-1,) if self.packed_k else ()) + self.shape)


class OnnxPredictor:
    """Owns an onnxruntime session of one exported `step`, its manifest, and the state between ticks."""

    def __init__(self, folder: str | os.PathLike, threads: int = 1, providers=None):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.session = _open_session(self.folder, self.manifest, threads, providers)
        graph = self.manifest["graph"]
        rows = graph.get("observations", graph["inputs"])
        self.inputs = [r["stream"] for r in rows if r.get("role") == "value"]
        self.tick = {r["name"]: np.zeros(r["shape"], r["dtype"]) for r in rows}  # (1, ...) each, refilled in place
        self.feed = {r["name"]: self.tick[r["name"]] for r in graph["inputs"]}  # the ones the graph reads
        self.streams = {s: _Stream(s, self.manifest["streams"][s], self.tick) for s in self.inputs}
        self.heads = [r["name"] for r in graph["outputs"]]
        self.state_specs = graph["state"]
        self.output_names = self.heads + [s["output"] for s in self.state_specs]
        self.rejected = {s: 0 for s in self.inputs}
        self.reset()

    @property
    def discrete(self) -> bool:
        """True when the model predicts class probabilities."""
        return self.heads == ["probs"]

    def initial_state(self) -> dict[str, np.ndarray]:
        """The state at reset, as the manifest states it."""
        out = {}
        for s in self.state_specs:
            init = s["init"]
            if "fill" in init:
                out[s["input"]] = np.full(s["shape"], init["fill"], s["dtype"])
            else:
                out[s["input"]] = np.asarray(init["values"], s["dtype"]).reshape(s["shape"])
        return out

    def reset(self) -> None:
        """Forget all state: the next `step` is the first tick of a new log."""
        self.state = self.initial_state()
        self.prev_t_ns: int | None = None
        for st in self.streams.values():
            st.has, st.held_age = False, 0.0

    def step(self, t_ns: int, observations: dict) -> Prediction:
        """Consume the observations at tick time `t_ns` (ns) and return the tick's prediction."""
        t = int(np.asarray(t_ns))
        if self.prev_t_ns is None:
            dt = 0.0
        elif t < self.prev_t_ns:
            raise ObservationError(f"t_ns went backwards ({t} after {self.prev_t_ns}); call reset() at the start of a new log.")
        else:
            dt = (t - self.prev_t_ns) / NS_PER_S
        for s, st in self.streams.items():
            if s not in observations:
                raise ObservationError(f"Missing stream '{s}' at t_ns={t}: pass its latest sample ({st.expected()}), "
                                       f"or None when no new sample arrived. Inputs: {self.inputs}.")
            if st.packed_k:
                self._packed(st, observations)
            else:
                self._latest(st, observations, dt)
        self.tick["dt_s"][0] = dt
        self.feed.update(self.state)
        outs = self.session.run(self.output_names, self.feed)
        self.prev_t_ns = t
        n = len(self.heads)
        self.state = {s["input"]: v for s, v in zip(self.state_specs, outs[n:])}
        if self.discrete:
            probs = outs[0][0]
            return Prediction(mean=np.asarray(np.argmax(probs)), probs=probs)
        return Prediction(mean=outs[0][0], var=outs[1][0])

    def step_tick(self, tick: dict) -> Prediction:
        """`step` on a dataset-style tick dict holding `t_ns` and the stream keys."""
        return self.step(tick["t_ns"], tick)

    def _latest(self, st: _Stream, obs: dict, dt: float) -> None:
        x = obs[st.name]
        valid = obs.get(f"{st.name}_valid", True)
        if x is not None:
            a = st.array(x)
            if not st.image and not np.isfinite(a).all():
                self.rejected[st.name] += 1
                x = None
            elif bool(np.asarray(valid)):
                st.value[...] = a
                st.has, st.held_age = True, float(np.asarray(obs.get(f"{st.name}_age_s", 0.0)))
            else:
                st.has = False
        if x is None and st.has:
            st.held_age += dt
        if st.has and st.held_age > st.max_age_s:
            st.has = False
        if not st.has:
            st.value[...] = 0
        st.age[0] = st.held_age if st.has else 0.0
        st.flag[0] = st.has

    def _packed(self, st: _Stream, obs: dict) -> None:
        x = obs[st.name]
        st.value[...] = 0
        st.age[...] = 0.0
        st.flag[...] = False
        if x is None:
            return
        a = st.array(x)
        k = len(a)
        mask = np.ones(k, bool) if obs.get(f"{st.name}_mask") is None else np.asarray(obs[f"{st.name}_mask"], bool).reshape(-1)
        age = np.zeros(k, np.float32) if obs.get(f"{st.name}_age_s") is None else np.asarray(obs[f"{st.name}_age_s"], np.float32).reshape(-1)
        if mask.shape != (k,) or age.shape != (k,):
            raise ObservationError(f"Stream '{st.name}': {k} samples but {mask.shape[0]} mask and {age.shape[0]} age entries; they must match.")
        finite = np.isfinite(a.reshape(k, -1)).all(-1) if not st.image else np.ones(k, bool)
        self.rejected[st.name] += int((mask & ~finite).sum())
        mask = mask & finite
        a, age, mask = a[-st.packed_k:], age[-st.packed_k:], mask[-st.packed_k:]  # the newest K
        lo = st.packed_k - len(a)
        st.value[lo:] = np.where(mask.reshape((-1,) + (1,) * len(st.shape)), a, 0)
        st.age[lo:] = np.where(mask, age, 0.0)
        st.flag[lo:] = mask


def load(folder: str | os.PathLike, threads: int = 1, providers=None) -> OnnxPredictor:
    """Load an export folder as a streaming predictor (reset/step); `threads` sets onnxruntime's intra-op threads."""
    return OnnxPredictor(folder, threads, providers)
