"""Tracing one `step` of a SequenceModel into an ONNX graph of flat tensors (batch size 1).

`StepModule` wraps `model.step(tick, state)` so that forward takes the tick keys of `tick_layout` and
the state tensors in a fixed order and returns the prediction heads and the next state. The TorchScript
exporter (`dynamo=False`) traces it; Python loops over static sizes unroll into the graph.
Ops ONNX lacks are the model's to avoid, explicitly: e.g. the `kalman` filter core calls
`statespace.update(..., exportable=True)` (Cholesky factor and solves unrolled) while
`torch.onnx.is_in_onnx_export()`. Nothing here replaces model code; `onnx_symbolics()` only registers an
ONNX form for `diag_embed` with torch's exporter for the duration of the export.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqsense.errors import SeqsenseError
from seqsense.runtime import MODEL_FILE

DEFAULT_OPSET = 17


def tick_layout(model) -> list[dict]:
    """The graph's observation inputs in order: name (= tick key), stream, role, shape without batch, dtype."""
    cfg = model.config
    rows = [{"name": "dt_s", "stream": None, "role": "dt_s", "shape": [], "dtype": "float32"}]
    for s in cfg.inputs:
        info = model.streams[s]
        shape = [int(x) for x in info.shape]
        value_dtype = "uint8" if info.kind == "image" else "float32"
        if s in cfg.packed:
            k = int(cfg.packed[s])
            rows += [
                {"name": s, "stream": s, "role": "value", "shape": [k] + shape, "dtype": value_dtype},
                {"name": f"{s}_age_s", "stream": s, "role": "age_s", "shape": [k], "dtype": "float32"},
                {"name": f"{s}_mask", "stream": s, "role": "mask", "shape": [k], "dtype": "bool"},
            ]
        else:
            rows += [
                {"name": s, "stream": s, "role": "value", "shape": shape, "dtype": value_dtype},
                {"name": f"{s}_age_s", "stream": s, "role": "age_s", "shape": [], "dtype": "float32"},
                {"name": f"{s}_valid", "stream": s, "role": "valid", "shape": [], "dtype": "bool"},
            ]
    return rows


class StepModule(nn.Module):
    """Owns nothing but a reference to the model: flat tensors in a fixed order -> flat outputs of one `step`."""

    def __init__(self, model, tick_names: list[str], state_names: list[str]):
        super().__init__()
        self.model = model
        self.tick_names = list(tick_names)
        self.state_names = list(state_names)

    def forward(self, *flat: torch.Tensor):
        n = len(self.tick_names)
        tick = dict(zip(self.tick_names, flat[:n]))
        state = dict(zip(self.state_names, flat[n:]))
        out, nxt = self.model.step(tick, state)
        if "logits" in out:
            heads = (torch.softmax(out["logits"], -1),)
        else:
            heads = (out["mean"], out["var"])
        return heads + tuple(nxt[k] for k in self.state_names)


def _diag_embed_symbolic(g, x, offset, dim1, dim2):
    """ONNX for `torch.diag_embed(x)` (default offset and dims, static last size): x[..., :, None] * I."""
    from torch.onnx import symbolic_helper as sh

    sizes = sh._get_tensor_sizes(x)
    if sizes is None or sizes[-1] is None or sh._maybe_get_const(offset, "i") != 0:
        return sh._unimplemented("diag_embed", "needs a static last dimension and offset 0", x)
    eye = torch.eye(int(sizes[-1]), dtype=sh._type_utils.JitScalarType.from_value(x).dtype())
    col = g.op("Unsqueeze", x, g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64)))
    return g.op("Mul", col, g.op("Constant", value_t=eye))


@contextlib.contextmanager
def onnx_symbolics(opset: int):
    """While exporting, register the ONNX form of `diag_embed` (through torch's symbolic registry); unregister after."""
    torch.onnx.register_custom_op_symbolic("aten::diag_embed", _diag_embed_symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::diag_embed", opset)


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _example_inputs(layout: list[dict], state: dict[str, torch.Tensor]) -> tuple:
    xs = []
    for row in layout:
        shape = (1, *row["shape"])
        if row["dtype"] == "bool":
            xs.append(torch.ones(shape, dtype=torch.bool))
        elif row["dtype"] == "uint8":
            xs.append(torch.full(shape, 128, dtype=torch.uint8))
        else:
            xs.append(torch.full(shape, 0.05, dtype=torch.float32))
    return tuple(xs) + tuple(state.values())


def export_onnx(model, path: Path, opset: int = DEFAULT_OPSET) -> dict:
    """Trace `model.step` (batch 1) into an ONNX file at `path`; returns the graph part of the manifest."""
    model = model.eval()
    layout = tick_layout(model)
    state = model.init_state(1)
    state_names = list(state)
    wrapper = StepModule(model, [r["name"] for r in layout], state_names).eval()
    heads = ["probs"] if model.discrete else ["mean", "var"]
    in_names = [r["name"] for r in layout] + [f"state/{k}" for k in state_names]
    out_names = heads + [f"next_state/{k}" for k in state_names]
    args = _example_inputs(layout, state)
    with torch.no_grad(), onnx_symbolics(opset), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on constant shapes and batch size 1, which is the point here
        torch.onnx.export(
            wrapper, args, str(path), input_names=in_names, output_names=out_names, opset_version=opset,
            dynamo=False, do_constant_folding=True,
        )
        outs = wrapper(*args)
    d = model.num_classes if model.discrete else model.target_dim
    outputs = [{"name": h, "shape": [1, d], "dtype": "float32"} for h in heads]
    states = []
    for k, nxt in zip(state_names, outs[len(heads):]):
        t = state[k]
        if tuple(nxt.shape) != tuple(t.shape) or nxt.dtype != t.dtype:
            raise SeqsenseError(f"{model.family}: next state {k!r} is {tuple(nxt.shape)} {nxt.dtype}, but init_state gives "
                                f"{tuple(t.shape)} {t.dtype}; the state must keep its shape and dtype to be exported.")
        arr = t.detach().cpu().numpy()
        init = {"fill": arr.flat[0].item()} if arr.size and np.all(arr == arr.flat[0]) else {"values": arr.tolist()}
        states.append({"name": k, "input": f"state/{k}", "output": f"next_state/{k}", "shape": list(t.shape),
                       "dtype": _dtype_name(t), "init": init})
    observations = [{**r, "shape": [1, *r["shape"]]} for r in layout]
    import onnx

    used = {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}  # the exporter drops unread inputs
    inputs = [r for r in observations if r["name"] in used]
    return {"file": MODEL_FILE, "opset": opset, "batch": 1, "observations": observations, "inputs": inputs,
            "outputs": outputs, "state": states}
