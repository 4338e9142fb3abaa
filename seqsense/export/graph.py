"""Tracing one `step` of a SequenceModel into an ONNX graph of flat tensors (batch size 1).

`StepModule` wraps `model.step(tick, state)` so that forward takes the tick keys of `tick_layout` and
the state tensors in a fixed order and returns the prediction heads and the next state. The TorchScript
exporter (`dynamo=False`) traces it; Python loops over static sizes unroll into the graph.
ONNX has no Cholesky op, so `exportable_ops()` swaps the Kalman update's Cholesky factor and solves
for unrolled forms of the same maths while tracing (m, the measurement size, is static).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqsense.errors import SeqsenseError
from seqsense.models import statespace as ss
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


def _cholesky_unrolled(S: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of S (..., m, m) with m static, as plain ops ONNX can express."""
    m = S.shape[-1]
    cols: list[list[torch.Tensor]] = [[None] * m for _ in range(m)]  # cols[i][j] = L[..., i, j]
    for j in range(m):
        d = S[..., j, j] - sum((cols[j][k] ** 2 for k in range(j)), torch.zeros_like(S[..., j, j]))
        cols[j][j] = torch.sqrt(d)
        for i in range(j + 1, m):
            acc = S[..., i, j] - sum((cols[i][k] * cols[j][k] for k in range(j)), torch.zeros_like(S[..., i, j]))
            cols[i][j] = acc / cols[j][j]
    zero = torch.zeros_like(S[..., 0, 0])
    return torch.stack([torch.stack([cols[i][j] if j <= i else zero for j in range(m)], -1) for i in range(m)], -2)


def _cho_solve_unrolled(b: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """x with L Lᵀ x = b for b (..., m, k), by unrolled forward and backward substitution."""
    m = L.shape[-1]
    y: list[torch.Tensor] = []
    for i in range(m):
        acc = b[..., i, :] - sum((L[..., i, k, None] * y[k] for k in range(i)), torch.zeros_like(b[..., i, :]))
        y.append(acc / L[..., i, i, None])
    x: list[torch.Tensor] = [None] * m
    for i in reversed(range(m)):
        acc = y[i] - sum((L[..., k, i, None] * x[k] for k in range(i + 1, m)), torch.zeros_like(y[i]))
        x[i] = acc / L[..., i, i, None]
    return torch.stack(x, -2)


def update_exportable(m, P, z, H, R, valid=None):
    """`statespace.update` with the Cholesky factor and solves unrolled (ONNX has no Cholesky op); same maths."""
    Ht = H.transpose(-1, -2)
    v = z - m @ Ht  # (B, m)
    PHt = P @ Ht  # (B, n, m)
    S = H @ PHt + R
    S = 0.5 * (S + S.transpose(-1, -2))
    L = _cholesky_unrolled(S)
    K = _cho_solve_unrolled(PHt.transpose(-1, -2), L).transpose(-1, -2)  # (B, n, m)
    m_new = m + (K @ v.unsqueeze(-1)).squeeze(-1)
    IKH = torch.eye(H.shape[-1], dtype=P.dtype) - K @ H
    P_new = IKH @ P @ IKH.transpose(-1, -2) + K @ R @ K.transpose(-1, -2)
    P_new = 0.5 * (P_new + P_new.transpose(-1, -2))
    ll = torch.zeros(m.shape[:-1], dtype=m.dtype)  # unused by `step`
    if valid is None:
        return m_new, P_new, ll
    ok = valid.to(torch.bool)
    return torch.where(ok.unsqueeze(-1), m_new, m), torch.where(ok[..., None, None], P_new, P), ll


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
def exportable_ops(opset: int):
    """While tracing, give ONNX forms to the few ops it lacks: Cholesky in the Kalman update, diag_embed."""
    saved = ss.update
    ss.update = update_exportable
    torch.onnx.register_custom_op_symbolic("aten::diag_embed", _diag_embed_symbolic, opset)
    try:
        yield
    finally:
        ss.update = saved
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
    with torch.no_grad(), exportable_ops(opset), warnings.catch_warnings():
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
