"""Run an exported predictor (`seqsense export`) with numpy + onnxruntime only: no torch, no training code.

    from seqsense import runtime
    pred = runtime.load("exports/rnn")          # checks the manifest against the graph
    pred.reset()                                 # start of a log
    p = pred.step(t_ns, {"imu": sample, "camera": frame_or_None, "camera_t_ns": frame_stamp_ns})
    p.mean, p.var                                # (D,) in target units; p.probs (K,) for labels

`OnnxPredictor` follows the robot-facing contract of `seqsense.predictor`: `step(t_ns,
observations)` takes the tick time and, for **every** input stream of the manifest, the sample(s)
that arrived since the previous tick (`None` when none did), optionally with their times
`observations["s_t_ns"]`. The causal sampling the model was trained on (dt_s, ages, hold, validity,
`max_age_s`, packing, rejection of NaN/Inf samples, counted in `pred.rejected`) is
`seqsense.ticks.TickBuilder`, the same code the torch predictor runs. `step_tick(tick)` is the
internal adapter taking a dataset tick as it is (replay, export check).

Wrong input is an `ObservationError` naming the stream, the expected shape and dtype: a missing
stream key, a wrong shape, a non-numeric dtype, a non-uint8 image, or time going backwards. Keys not
naming an input stream (e.g. a dataset tick's `target`) are ignored. A folder whose manifest does
not match its graph, a truncated graph, or an export from a newer format is a `CheckpointError`
from `load`. onnxruntime runs with one intra-op thread by default (robot loops own their cores).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from seqsense.errors import CheckpointError
from seqsense.predictor import Prediction
from seqsense.ticks import NS_PER_S, BuiltTicks, ObservationError, TickBuilder

__all__ = ["NS_PER_S", "ObservationError", "OnnxPredictor", "TickBuilder", "load", "read_manifest"]

EXPORT_FORMAT = "seqsense-export"
EXPORT_FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
ORT_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int64": "tensor(int64)", "bool": "tensor(bool)",
             "uint8": "tensor(uint8)", "int32": "tensor(int32)"}


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


class OnnxPredictor(BuiltTicks):
    """Owns an onnxruntime session of one exported `step`, its manifest, the tick builder and the state between ticks.

    The step allocates almost nothing: the tick arrays (`self.tick`, filled by a `TickBuilder`), the
    output arrays and two state buffers are allocated once and bound to the session as OrtValues that
    share their memory. Two IO bindings alternate, one reading state buffer A and writing the next
    state into B and the other the reverse, so carrying the state is a flip of an index, not a copy.
    """

    def __init__(self, folder: str | os.PathLike, threads: int = 1, providers=None):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.session = _open_session(self.folder, self.manifest, threads, providers)
        graph = self.manifest["graph"]
        self.builder = TickBuilder.from_manifest(self.manifest, batch=True)
        self.inputs = self.builder.inputs
        self.tick = self.builder.tick  # (1, ...) each, refilled in place at every step
        for r in graph.get("observations", graph["inputs"]):
            a = self.tick.get(r["name"])
            if a is None or list(a.shape) != list(r["shape"]) or a.dtype != np.dtype(r["dtype"]):
                raise CheckpointError(f"'{self.folder / MANIFEST_FILE}': graph input '{r['name']}' is {r['dtype']} {r['shape']}, but its "
                                      f"stream entry gives {None if a is None else (str(a.dtype), list(a.shape))}. Export again.")
        self.heads = [r["name"] for r in graph["outputs"]]
        self.state_specs = graph["state"]
        self.output_names = self.heads + [s["output"] for s in self.state_specs]
        self._obs_names = [r["name"] for r in graph["inputs"]]  # the observations the graph reads
        self._out = {r["name"]: np.zeros(r["shape"], r["dtype"]) for r in graph["outputs"]}
        self._buffers = [{s["input"]: np.zeros(s["shape"], s["dtype"]) for s in self.state_specs} for _ in range(2)]
        value = ort.OrtValue.ortvalue_from_numpy  # on CPU the OrtValue shares the numpy array's memory
        obs = {n: value(self.tick[n]) for n in self._obs_names}
        out = {n: value(a) for n, a in self._out.items()}
        states = [{k: value(a) for k, a in buf.items()} for buf in self._buffers]
        self._bindings = []
        for i in range(2):
            b = self.session.io_binding()
            for n, v in obs.items():
                b.bind_ortvalue_input(n, v)
            for s in self.state_specs:
                b.bind_ortvalue_input(s["input"], states[i][s["input"]])
                b.bind_ortvalue_output(s["output"], states[1 - i][s["input"]])
            for n, v in out.items():
                b.bind_ortvalue_output(n, v)
            self._bindings.append(b)
        self._ortvalues = (obs, out, states)  # keep the bound values alive
        self._run = self.session.run_with_iobinding
        self._probs = self._out.get("probs")
        self._mean, self._var = self._out.get("mean"), self._out.get("var")
        self.reset()

    @property
    def discrete(self) -> bool:
        """True when the model predicts class probabilities."""
        return self.heads == ["probs"]

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The state the next step reads (views of the current buffer)."""
        return self._buffers[self._cur]

    @property
    def feed(self) -> dict[str, np.ndarray]:
        """Every graph input as the next step feeds it (a plain `session.run` feed, for diagnostics and benchmarks)."""
        return {**{n: self.tick[n] for n in self._obs_names}, **self.state}

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
        self._cur = 0
        for k, v in self.initial_state().items():
            self._buffers[0][k][...] = v
        self.builder.reset()

    def step(self, t_ns: int, observations: dict) -> Prediction:
        """Consume the samples that arrived by tick time `t_ns` (ns) and return the tick's prediction (module docstring)."""
        self.builder.build(t_ns, observations)
        return self._run_step()

    def step_tick(self, tick: dict) -> Prediction:
        """Internal adapter: `step` on a dataset-style tick (`seqsense.predictor`), taken as it is, without sampling."""
        self.builder.load_tick(tick)
        return self._run_step()

    def _run_step(self) -> Prediction:
        self._run(self._bindings[self._cur])
        self._cur ^= 1  # the next state was written into the other buffer
        if self._probs is not None:
            probs = self._probs[0].copy()
            return Prediction(mean=np.asarray(np.argmax(probs)), probs=probs)
        return Prediction(mean=self._mean[0].copy(), var=self._var[0].copy())


def load(folder: str | os.PathLike, threads: int = 1, providers=None) -> OnnxPredictor:
    """Load an export folder as a streaming predictor (reset/step); `threads` sets onnxruntime's intra-op threads."""
    return OnnxPredictor(folder, threads, providers)
