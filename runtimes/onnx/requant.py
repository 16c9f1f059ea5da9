"""The `integer` graph form for conv nets: requantise conv outputs and residual adds so onnxruntime runs
integer kernels end to end.

onnxruntime turns DQ→Conv→Q into QLinearConv and DQ,DQ→Add→Q into QLinearAdd only when the op's output
is quantised too. A fake-quant model quantises layer *inputs*; a conv followed by ReLU6 and the next
layer's input quantiser already has that shape, but a projection conv feeding a residual add, and the add
itself, do not — they stay float, with the weight dequantised on every run. This pass adds a uint8 QDQ
pair (min-max calibrated on real images) at each such point and lets the add read the quantised copy of
its skip input. That is extra rounding the torch model does not have, so it is opt-in (`graph_form=
"integer"`); the export's parity check still has to pass against the unchanged torch model.

The classifier gets the same treatment: a global average pool whose output reaches the head's input
quantiser through layout-only ops (Flatten, Reshape) is requantised on *that* quantiser's grid (no extra
rounding: the second QuantizeLinear sees values already on it), so onnxruntime runs QLinearGlobalAveragePool;
and a Gemm/MatMul of two dequantised inputs gets its float bias as int32 on the product scale (a DQ, the
rounding ≤ half a step of s_x·s_w), the form onnxruntime fuses into QGemm with a float output. Before, the
head's 1.28 M-weight DequantizeLinear ran on every MobileNetV2 inference: 1.91× FP32 against onnxruntime's
own static QDQ graph at 2.16×.
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


_LAYOUT = ("Flatten", "Reshape", "Squeeze")


def _pool_grids(g, cons: dict, points: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """GlobalAveragePool outputs (input dequantised, or one of the requant `points`) → (scale, zero point)
    values of the per-tensor QuantizeLinear they reach through layout-only ops: the grid to requantise them on."""
    produced_by = {o: n for n in g.node for o in n.output}
    out = {}
    for n in g.node:
        if n.op_type != "GlobalAveragePool" or (
                getattr(produced_by.get(n.input[0]), "op_type", "") != "DequantizeLinear" and n.input[0] not in points):
            continue
        t = n.output[0]
        users = cons.get(t, [])
        while len(users) == 1 and users[0].op_type in _LAYOUT:
            users = cons.get(users[0].output[0], [])
        q = next((u for u in users if u.op_type == "QuantizeLinear" and len(u.input) == 3), None)
        if q is not None and not any(u.op_type == "QuantizeLinear" for u in cons.get(t, [])):
            scale, zero = _tensor(g, q.input[1]), _tensor(g, q.input[2])
            if scale is not None and zero is not None and scale.size == 1:
                out[t] = (scale, zero)
    return out


def _tensor(g, name: str) -> np.ndarray | None:
    """An initializer's or a Constant node's value."""
    for i in g.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def _integer_biases(g) -> int:
    """Give every Gemm whose input and weight are DequantizeLinear outputs its float bias as int32 on the scale
    s_x·s_w (per output channel), dequantised: what onnxruntime fuses into QGemm. Returns how many."""
    produced_by = {o: n for n in g.node for o in n.output}
    done = 0
    for n in list(g.node):
        if n.op_type != "Gemm" or len(n.input) < 3 or not n.input[2]:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        dx, dw = (produced_by.get(i) for i in n.input[:2])
        bias = _tensor(g, n.input[2])
        if attrs.get("transA", 0) or getattr(dx, "op_type", "") != "DequantizeLinear" \
                or getattr(dw, "op_type", "") != "DequantizeLinear" or bias is None or bias.ndim != 1:
            continue
        sx, sw = _tensor(g, dx.input[1]), _tensor(g, dw.input[1])
        if sx is None or sw is None or sx.size != 1 or sw.size not in (1, bias.size):
            continue
        scale = (np.float32(sx.reshape(())) * np.broadcast_to(sw.astype(np.float32), bias.shape)).astype(np.float32)
        q = np.round(bias.astype(np.float64) / np.maximum(scale, 1e-30)).astype(np.int32)
        base = f"{n.input[2]}.int32"
        g.initializer.extend([numpy_helper.from_array(q, base), numpy_helper.from_array(scale, f"{base}.scale"),
                              numpy_helper.from_array(np.zeros_like(q), f"{base}.zero_point")])
        dq = helper.make_node("DequantizeLinear", [base, f"{base}.scale", f"{base}.zero_point"], [f"{base}.dq"], axis=0)
        g.node.insert(list(g.node).index(n), dq)
        n.input[2] = dq.output[0]
        done += 1
    return done


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


def add_integer_requant(m: onnx.ModelProto, calib_inputs: np.ndarray) -> dict:
    """Rewrite `m` in place into the integer form; returns how many QDQ pairs (`requantised_outputs`) and int32
    biases were added."""
    g = m.graph
    points = requant_points(m)
    cons = _consumers(g)
    pools = _pool_grids(g, cons, points)
    biases = _integer_biases(g)
    if not points and not pools:
        return {"requantised_outputs": 0, "int32_biases": biases}
    ranges = calibrate_ranges(m, points, calib_inputs) if points else {}
    new_nodes: dict[str, list] = {}
    for t in [*points, *pools]:
        if t in pools:
            s, zp = pools[t]
        else:
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
    return {"requantised_outputs": len(points) + len(pools), "int32_biases": biases}
