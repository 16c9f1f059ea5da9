"""The `integer` graph form for conv nets: requantise conv outputs and residual adds so onnxruntime runs
integer kernels end to end.

onnxruntime turns DQ→Conv→Q into QLinearConv and DQ,DQ→Add→Q into QLinearAdd only when the op's output
is quantised too. A fake-quant model quantises layer *inputs*; a conv followed by ReLU6 and the next
layer's input quantiser already has that shape, but a projection conv feeding a residual add, and the add
itself, do not — they stay float, with the weight dequantised on every run. This pass adds a uint8 QDQ
pair (min-max calibrated on real images) at each such point and lets the add read the quantised copy of
its skip input. That is extra rounding the torch model does not have, so it is opt-in (`graph_form=
"integer"`); the export's parity check still has to pass against the unchanged torch model.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _consumers(g) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _quantised_copy(t: str, cons: dict) -> str | None:
    """The DequantizeLinear output that re-reads `t` through a QDQ pair, if the graph has one."""
    for q in cons.get(t, []):
        if q.op_type == "QuantizeLinear":
            for d in cons.get(q.output[0], []):
                if d.op_type == "DequantizeLinear":
                    return d.output[0]
    return None


def _needs_requant(t: str, cons: dict) -> bool:
    users = cons.get(t, [])
    if any(u.op_type == "QuantizeLinear" for u in users):
        return False
    if len(users) == 1 and users[0].op_type in ("Clip", "Relu") and any(
            u.op_type == "QuantizeLinear" for u in cons.get(users[0].output[0], [])):
        return False
    return True


def requant_points(m: onnx.ModelProto) -> list[str]:
    """Float tensors to requantise: outputs of quantised convs and of adds of conv outputs."""
    g = m.graph
    produced_by = {o: n for n in g.node for o in n.output}
    cons = _consumers(g)
    quant_conv = {n.output[0] for n in g.node if n.op_type == "Conv"
                  and getattr(produced_by.get(n.input[1]), "op_type", "") == "DequantizeLinear"}
    points = []
    for t in quant_conv:
        users = cons.get(t, [])
        if len(users) == 1 and users[0].op_type in ("Clip", "Relu"):
            t = users[0].output[0]   # requantise after the activation: ORT folds it into QLinearConv
        if _needs_requant(t, cons):
            points.append(t)
    for n in g.node:
        if n.op_type == "Add" and any(i in quant_conv for i in n.input) and _needs_requant(n.output[0], cons):
            points.append(n.output[0])
    return sorted(set(points), key=lambda t: [o for n in g.node for o in n.output].index(t))


def calibrate_ranges(m: onnx.ModelProto, tensors: list[str], inputs: np.ndarray, batch: int = 64) -> dict:
    """(min, max) of each named tensor over `inputs`, run with onnxruntime (no graph rewrites)."""
    from runtimes.onnx.probe import probe_session
    sess = probe_session(m, tensors)
    name = sess.get_inputs()[0].name
    lo = np.full(len(tensors), np.inf)
    hi = np.full(len(tensors), -np.inf)
    for i in range(0, len(inputs), batch):
        outs = sess.run(tensors, {name: inputs[i:i + batch]})
        lo = np.minimum(lo, [o.min() for o in outs])
        hi = np.maximum(hi, [o.max() for o in outs])
    return {t: (float(a), float(b)) for t, a, b in zip(tensors, lo, hi)}


def add_integer_requant(m: onnx.ModelProto, calib_inputs: np.ndarray) -> int:
    """Rewrite `m` in place into the integer form; returns how many QDQ pairs were added."""
    g = m.graph
    points = requant_points(m)
    if not points:
        return 0
    ranges = calibrate_ranges(m, points, calib_inputs)
    cons = _consumers(g)
    new_nodes: dict[str, list] = {}
    for t in points:
        lo, hi = min(ranges[t][0], 0.0), max(ranges[t][1], 0.0)
        s = np.float32(max((hi - lo) / 255.0, 1e-12))
        zp = np.uint8(np.clip(np.round(-lo / s), 0, 255))
        sn, zn = f"{t}.rq_scale", f"{t}.rq_zero_point"
        g.initializer.extend([numpy_helper.from_array(np.array(s), sn), numpy_helper.from_array(np.array(zp), zn)])
        q, d = f"{t}.rq_q", f"{t}.rq"
        new_nodes[t] = [helper.make_node("QuantizeLinear", [t, sn, zn], [q]),
                        helper.make_node("DequantizeLinear", [q, sn, zn], [d])]
        for u in cons.get(t, []):
            for k, i in enumerate(u.input):
                if i == t:
                    u.input[k] = d
    # residual adds read the quantised copy of their skip input, so ORT sees DQ,DQ → Add → Q
    cons = _consumers(g)
    for n in g.node:
        if n.op_type == "Add":
            for k, i in enumerate(n.input):
                qc = _quantised_copy(i, cons)
                if qc is not None:
                    n.input[k] = qc
    nodes = list(g.node)
    del g.node[:]
    for n in nodes:
        g.node.append(n)
        for o in n.output:
            g.node.extend(new_nodes.get(o, []))
    return len(points)
