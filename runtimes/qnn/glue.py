"""The QNN graph's extra activation encodings, modelled in the torch reference.

QNN HTP quantises every tensor; edgevit's quantisation only rounds the inputs of Linear/Conv layers.
The tensors in between (a conv's output before its activation, a residual sum, the logits) get
min-max encodings from onnxruntime's QNN recipe (see bundle.py). A reference that leaves them float
is not the model the bundle contains: on mobilenet-mini W8A8 those encodings alone flip 3 of 256
test images, on the CPU EP as on HTP. As AIMET's QuantSim does, the reference here rounds the same
tensors with the same encodings, so parity measures the HTP arithmetic, not a missing quantiser.

Each encoded tensor of the float graph is matched, by value on one calibration image, to the first
torch module call (in execution order) that produces it. Tensors made by functional ops inside a
module (a decomposed LayerNorm's mean, say) have no module output; a graph with any of those keeps
the plain reference (see with_glue) and the summary lists them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

QRANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
          onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767)}


@dataclass(frozen=True)
class Encoding:
    scale: float
    zero_point: int
    qmin: int
    qmax: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """QuantizeLinear → DequantizeLinear, as onnxruntime computes it (x / s, round half to even)."""
        q = torch.clamp(torch.round(x / self.scale) + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * self.scale


def activation_encodings(qdq_path: Path, float_path: Path) -> dict[str, Encoding]:
    """Float-graph tensor → encoding of every per-tensor QuantizeLinear on an activation of the QDQ graph.

    The quantiser renames a graph output it rounds to `NAME_QuantizeLinear_Input`; that maps back to NAME.
    Constants it rounds (a Clip's bounds) are not activations and are left out.
    """
    fg = onnx.load(str(float_path)).graph
    tensors = {i.name for i in fg.input} | {o for n in fg.node if n.op_type != "Constant" for o in n.output}
    g = onnx.load(str(qdq_path)).graph
    inits = {i.name: i for i in g.initializer}
    out = {}
    for n in g.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits or len(n.input) < 3 or n.input[2] not in inits:
            continue
        zp_init = inits[n.input[2]]
        scale, zp = numpy_helper.to_array(inits[n.input[1]]), numpy_helper.to_array(zp_init)
        if scale.size != 1 or zp_init.data_type not in QRANGE:
            continue
        t = n.input[0].removesuffix("_QuantizeLinear_Input") if n.input[0] not in tensors else n.input[0]
        if t in tensors:
            out.setdefault(t, Encoding(float(scale), int(zp), *QRANGE[zp_init.data_type]))
    return out


def _onnx_values(float_path: Path, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The float graph's value of each named tensor on input x."""
    from runtimes.onnx.probe import probe_session
    sess = probe_session(onnx.load(str(float_path)), names)
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def _next_call(calls: dict[str, int], name: str) -> int:
    """The index of this call of module `name` in the current forward (0, 1, … per module)."""
    calls[name] = calls.get(name, -1) + 1
    return calls[name]


def _module_outputs(model: nn.Module, x: np.ndarray, skip: set[str]) -> list[tuple[tuple[str, int], np.ndarray]]:
    """((module name, call index), output) of every module call, in the order the calls finish.

    A module can run several times in one forward (one instance applied per attention head, say);
    each call's output is a different tensor of the graph.
    """
    seen: list[tuple[tuple[str, int], np.ndarray]] = []
    calls: dict[str, int] = {}

    def record(name, o):
        if isinstance(o, torch.Tensor):
            seen.append(((name, _next_call(calls, name)), o.detach().numpy()))
    hooks = [m.register_forward_hook(lambda _m, _i, o, name=name: record(name, o))
             for name, m in model.named_modules() if name and name not in skip]
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    return seen


def match_modules(twin: nn.Module, float_path: Path, tensors: list[str], x: np.ndarray,
                  skip: set[str]) -> dict[str, tuple[str, int]]:
    """tensor → (module name, call index) of the first module call of `twin` whose output equals it."""
    values = _onnx_values(float_path, tensors, x)
    produced = _module_outputs(twin, x, skip)
    found = {}
    for t, v in values.items():
        tol = 1e-5 * max(1.0, float(np.abs(v).max()))
        for name, o in produced:
            if o.shape == v.shape and float(np.abs(o - v).max()) <= tol:
                found[t] = name
                break
    return found


@dataclass
class GlueReport:
    encoded: int          # activation tensors the QDQ graph rounds beyond edgevit's layer inputs
    matched: int          # of those, produced by a module call of the reference
    unmatched: list       # the rest (functional ops with no module output)

    @property
    def modelled(self) -> bool:
        return not self.unmatched

    def summary(self) -> dict:
        return {"recipe_encodings": self.encoded, "matched_to_modules": self.matched,
                "modelled_in_reference": self.modelled, "unmatched": self.unmatched[:20]}


def with_glue(reference: nn.Module, twin: nn.Module, float_path: Path, qdq_path: Path, own: set[str],
              x: np.ndarray, skip: set[str]) -> tuple[nn.Module, GlueReport]:
    """A copy of `reference` that rounds every tensor the QDQ graph rounds, if a module makes each.

    `twin`: the float model the float graph's values come from, with the reference's module names
    (dequantised weights, activation quantisers as identities); `own`: tensors carrying edgevit's
    encodings; `skip`: module names never matched (the activation-quantiser slots); `x`: one image.
    Own tensors are rounded at their producer too: the QDQ graph rounds a tensor once for all its
    consumers (a residual branch included), and on the quantised layer's path that second rounding
    on the same grid changes nothing. All or nothing: when some tensor has no module producing it
    (a rewritten ViT's decomposed LayerNorm), `reference` is returned as it is. Rounding only part
    of the graph's tensors was measured to move the reference *away* from the QDQ graph (vit-tiny
    W8A8: 24.6 → 23.2 dB against the graph on the CPU EP, 64 of 567 tensors matched).
    """
    enc = activation_encodings(qdq_path, float_path)
    where = match_modules(twin, float_path, sorted(enc), x[:1], skip)
    glue = set(enc) - own
    report = GlueReport(len(glue), len(glue & set(where)), sorted(set(enc) - set(where) - own))
    if not report.modelled:
        return reference, report
    ref = copy.deepcopy(reference).eval()
    per_call: dict[str, dict[int, Encoding]] = {}
    for t, (name, k) in where.items():
        per_call.setdefault(name, {}).setdefault(k, enc[t])
    calls: dict[str, int] = {}
    ref.register_forward_pre_hook(lambda *_: calls.clear())

    def round_call(name, o):
        e = per_call[name].get(_next_call(calls, name))
        return o if e is None else e(o)
    for name in per_call:
        ref.get_submodule(name).register_forward_hook(lambda _m, _i, o, name=name: round_call(name, o))
    return ref, report
