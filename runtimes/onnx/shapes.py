"""Fold shape arithmetic that is static once the graph's input shape is fixed except for the batch.

The TorchScript exporter traces `B, N, C = x.shape; x.reshape(B, N, 3, H, C // H)` as Shape → Gather →
Unsqueeze → Concat → Reshape chains, about 10 nodes per reshape, kept even though only B is dynamic.
With shapes inferred (batch symbolic), every such vector whose entries are all known becomes a constant,
one that is known but for a single dynamic entry feeds Reshape as -1 (the element count fixes it),
and the chains that computed them are dropped. The arithmetic on tensors is untouched.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

_DYN = None   # an entry whose value is only known at run time
# integer arithmetic on shape entries (ONNX integer Div truncates toward zero)
_ARITH = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
          "Div": lambda x, y: np.trunc(x / y).astype(np.int64)}


def _dims(vi) -> list | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else _DYN for d in t.shape.dim]


def _known_values(m: onnx.ModelProto, shapes: dict) -> dict[str, tuple[list, bool]]:
    """name → (entries, is_scalar) for int64 vectors/scalars computable from static shapes."""
    vals: dict[str, tuple[list, bool]] = {}
    for i in m.graph.initializer:
        if i.data_type == onnx.TensorProto.INT64 and len(i.dims) <= 1:
            a = numpy_helper.to_array(i)
            vals[i.name] = (a.reshape(-1).tolist(), a.ndim == 0)
    for n in m.graph.node:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        ins = [vals.get(i) for i in n.input]
        out = None
        if n.op_type == "Constant" and "value" in a and a["value"].data_type == onnx.TensorProto.INT64 \
                and len(a["value"].dims) <= 1:
            arr = numpy_helper.to_array(a["value"])
            out = (arr.reshape(-1).tolist(), arr.ndim == 0)
        elif n.op_type == "Shape" and shapes.get(n.input[0]) is not None:
            out = (shapes[n.input[0]][a.get("start", 0):a.get("end", None)], False)
        elif n.op_type == "Gather" and ins[0] and ins[1] and a.get("axis", 0) == 0:
            idx = ins[1][0]
            if all(isinstance(j, int) for j in idx):
                out = ([ins[0][0][j] for j in idx], ins[1][1])
        elif n.op_type == "Unsqueeze" and ins[0] and ins[0][1]:
            out = (ins[0][0], False)
        elif n.op_type == "Squeeze" and ins[0] and len(ins[0][0]) == 1:
            out = (ins[0][0], True)
        elif n.op_type == "Concat" and all(ins) and a.get("axis") == 0:
            out = ([e for v in ins for e in v[0]], False)
        elif n.op_type == "Cast" and ins[0] and a.get("to") == onnx.TensorProto.INT64:
            out = ins[0]
        elif n.op_type == "Slice" and len(ins) >= 3 and all(ins[:3]) and all(v is not None for v in ins[3:]) \
                and (len(ins) < 4 or ins[3][0] in ([0], [-1])) and (len(ins) < 5 or len(ins[4][0]) == 1):
            (lo,), (hi,) = ins[1][0], ins[2][0]
            step = ins[4][0][0] if len(ins) >= 5 else 1
            if isinstance(lo, int) and isinstance(hi, int) and isinstance(step, int) and step:
                out = (ins[0][0][slice(lo, hi, step)], False)
        elif n.op_type in _ARITH and len(ins) == 2 and all(ins) \
                and all(isinstance(e, int) for v in ins for e in v[0]) and (len(ins[0][0]) == len(ins[1][0])
                                                                           or 1 in (len(ins[0][0]), len(ins[1][0]))):
            x, y = (np.array(v[0], np.int64) for v in ins)
            if n.op_type != "Div" or (y != 0).all():
                out = (_ARITH[n.op_type](x, y).reshape(-1).tolist(), ins[0][1] and ins[1][1])
        if out is not None:
            vals[n.output[0]] = out
    return vals


def _inferable(m: onnx.ModelProto) -> onnx.ModelProto:
    """`m` for ONNX's shape inference, which knows no onnxruntime contrib op: inside model-local functions, each
    com.microsoft MatMulIntegerToFloat becomes MatMulInteger → Cast to float (same output shape and type)."""
    if not any(n.domain == "com.microsoft" for f in m.functions for n in f.node):
        return m
    m = copy.deepcopy(m)
    for f in m.functions:
        nodes = []
        for n in f.node:
            if n.domain == "com.microsoft" and n.op_type == "MatMulIntegerToFloat":
                a, b, *rest = n.input
                zps = list(rest[2:4])
                nodes += [helper.make_node("MatMulInteger", [a, b, *zps], [n.output[0] + "_i32"]),
                          helper.make_node("Cast", [n.output[0] + "_i32"], list(n.output), to=onnx.TensorProto.FLOAT)]
            else:
                nodes.append(n)
        del f.node[:]
        f.node.extend(nodes)
    return m


def fold_static_shapes(m: onnx.ModelProto) -> int:
    """Rewrite `m` in place; returns how many nodes were removed."""
    g = m.graph
    inferred = onnx.shape_inference.infer_shapes(_inferable(m))
    shapes = {v.name: _dims(v) for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    vals = _known_values(m, shapes)
    produced = {o: n for n in g.node for o in n.output}
    taken = set(produced) | {i.name for i in g.initializer} | {i.name for i in g.input}
    consts: dict[tuple, str] = {}

    def constant(entries: list, scalar: bool) -> str:
        key = (tuple(entries), scalar)
        if key not in consts:
            name = next(f"shape{j}" for j in range(len(consts), len(consts) + len(taken) + 1)
                        if f"shape{j}" not in taken)
            taken.add(name)
            arr = np.array(entries[0] if scalar else entries, np.int64)
            g.initializer.append(numpy_helper.from_array(arr, name))
            consts[key] = name
        return consts[key]

    for n in g.node:
        for k, i in enumerate(n.input):
            if i not in vals or i not in produced or produced[i].op_type == "Constant":
                continue
            entries, scalar = vals[i]
            if all(isinstance(e, int) for e in entries):
                n.input[k] = constant(entries, scalar)
            elif n.op_type == "Reshape" and k == 1 and sum(e is _DYN for e in entries) == 1 \
                    and -1 not in entries and 0 not in entries:
                n.input[k] = constant([-1 if e is _DYN else e for e in entries], False)
    return _drop_dead(m)


def _drop_dead(m: onnx.ModelProto) -> int:
    g = m.graph
    removed = 0
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        keep = [n for n in g.node if any(o in used for o in n.output)]
        if len(keep) == len(g.node):
            break
        removed += len(g.node) - len(keep)
        del g.node[:]
        g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    return removed


_INT_TYPES = (np.int64, np.int32, np.bool_)


def fold_integer_constants(m: onnx.ModelProto, max_elements: int = 4096) -> int:
    """For a graph with fully static shapes (the QNN float graph, batch 1): evaluate every node whose inputs are
    all known small integer tensors — Shape of a statically shaped tensor, Constant, initializer, or a node
    already folded — and feed its consumers an initializer instead. Covers what fold_static_shapes does not
    (ConstantOfShape, Mod, Where, 2-D pads arithmetic: Swin's window padding). Float arithmetic is never
    evaluated here. Returns how many nodes were removed."""
    from onnx.reference import ReferenceEvaluator
    g = m.graph
    inferred = onnx.shape_inference.infer_shapes(m)
    shapes = {v.name: _dims(v) for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    known = {i.name: numpy_helper.to_array(i) for i in g.initializer
             if i.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)
             and int(np.prod(i.dims)) <= max_elements}
    outputs = {o.name for o in g.output}
    folded: dict[str, np.ndarray] = {}
    for n in g.node:
        if n.domain not in ("", "ai.onnx") or not n.output or set(n.output) & outputs:
            continue
        if n.op_type == "Shape":
            dims = shapes.get(n.input[0])
            if dims is None or _DYN in dims:
                continue
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            vals = [np.array(dims[a.get("start", 0):a.get("end", None)], np.int64)]
        elif n.op_type == "Constant" or (all(i in known for i in n.input if i) and any(n.input)):
            if n.op_type in ("QuantizeLinear", "DequantizeLinear", "RandomNormal", "RandomUniform"):
                continue
            try:
                feeds = {i: known[i] for i in n.input if i}
                graph = onnx.helper.make_graph(
                    [n], "fold", [onnx.helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(v.dtype),
                                                                    v.shape) for i, v in feeds.items()],
                    [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in n.output])
                model = onnx.helper.make_model(graph, opset_imports=m.opset_import)
                vals = ReferenceEvaluator(model).run(None, feeds)
            except Exception:   # noqa: BLE001 — an op the reference cannot run stays in the graph
                continue
        else:
            continue
        vals = [np.asarray(v) for v in vals]
        if not all(v.dtype.type in _INT_TYPES and v.size <= max_elements for v in vals):
            continue
        for o, v in zip(n.output, vals):
            known[o] = v
            folded[o] = v
    if not folded:
        return 0
    taken = {i.name for i in g.initializer}
    for o, v in folded.items():
        if o not in taken:
            g.initializer.append(numpy_helper.from_array(v, o))
    folded_nodes = [n for n in g.node if n.output and all(o in folded for o in n.output)]
    for n in folded_nodes:
        g.node.remove(n)
    _drop_dead(m)
    return len(folded_nodes)
