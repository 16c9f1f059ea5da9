"""Quantised ONNX graphs with real low-bit weights.

The float twin of the fake-quant model (dequantised weights, plain Linear/Conv2d) is exported with the
shared FP32 exporter; each quantised layer's weight initializer is then found by value and replaced:

  int8, int4 (opset 21), fp8 e4m3fn/e5m2   → typed codes + DequantizeLinear (per-axis or blocked scales)
  int2/3/5/6/7, int4 per-group on convs    → codes packed 32//b per uint32 word, unpacked in-graph
                                              (BitShift, BitwiseAnd), minus offset, times scale
  fp4 e2m1, fp6 e2m3/e3m2                  → packed codes + Gather on the code→value table, times scale

Activation quantisation is written into the graph at each layer's input: INT8 per-token dynamic
activations with INT8 weights become MatMulInteger on int8 codes with the per-token × per-channel
scale applied to the int32 result (the `integer` form, fast on onnxruntime CPU); every other
activation format is expressed as its exact rounding in float ops (the `qdq` form).
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from torch import nn

from runtimes.errors import ExportError
from runtimes.onnx.export import export_onnx
from runtimes.onnx.quantspec import (ActQuant, LayerQuant, QuantSpec, format_bits, fp_grid_codes,
                                     spec_from_model)

QUANT_OPSET = 21
# onnxruntime rewrites DequantizeLinear(int4/int8 weights) → MatMul into MatMulNBits, which by default
# (accuracy level 4) also quantises the activations to int8: not what a weight-only graph says. Level 0
# keeps float activations; the runner applies these options from the manifest.
ORT_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0"}
_DQ_TYPES = {"int8": T.INT8, "int4": T.INT4, "fp8_e4m3": T.FLOAT8E4M3FN, "fp8_e5m2": T.FLOAT8E5M2}
_FP_MAX = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0, "fp6_e2m3": 7.5, "fp6_e3m2": 28.0, "fp4_e2m1": 6.0}
_CAST_TYPES = {"fp8_e4m3": T.FLOAT8E4M3FN, "fp8_e5m2": T.FLOAT8E5M2, "fp4_e2m1": T.FLOAT4E2M1}

__all__ = ["export_quantized_onnx", "spec_from_model", "float_twin"]


def fold_batchnorm(model: nn.Module, spec: QuantSpec) -> tuple[nn.Module, QuantSpec]:
    """Fold each BatchNorm2d that directly follows a quantised conv (same nn.Sequential) into its scale.

    The exporter folds eval-mode BN into the conv anyway; doing it here keeps the codes exact: BN scales
    output channels, so it multiplies the per-channel/per-group scales and leaves the grid values alone.
    """
    model = copy.deepcopy(model).eval()
    layers = dict(spec.layers)
    for name, lq in spec.layers.items():
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if not (isinstance(owner, nn.Sequential) and leaf.isdigit() and int(leaf) + 1 < len(owner)):
            continue
        bn = owner[int(leaf) + 1]
        if not isinstance(bn, nn.BatchNorm2d) or lq.q.ndim != 4:
            continue
        gamma = (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).numpy().astype(np.float32)
        conv = owner[int(leaf)]
        b = conv.bias.detach().numpy() if getattr(conv, "bias", None) is not None else 0.0
        new_bias = ((b - bn.running_mean.detach().numpy()) * gamma + bn.bias.detach().numpy()).astype(np.float32)
        layers[name] = LayerQuant(lq.fmt, lq.q, lq.scale * gamma[:, None], lq.zero_point, lq.act)
        conv.bias = nn.Parameter(torch.from_numpy(new_bias))
        owner[int(leaf) + 1] = nn.Identity()
    return model, QuantSpec(spec.precision, layers, spec.graph_form)


def float_twin(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """A copy of `model` whose quantised layers are plain Linear/Conv2d holding the dequantised weights."""
    twin = copy.deepcopy(model).eval()
    for name, lq in spec.layers.items():
        parent, _, leaf = name.rpartition(".")
        owner = twin.get_submodule(parent) if parent else twin
        old = getattr(owner, leaf)
        w = torch.from_numpy(lq.dequantized())
        bias = getattr(old, "bias", None)
        if w.ndim == 2:
            new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        elif w.ndim == 4 and isinstance(old, nn.Conv2d):
            new = nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                            old.dilation, old.groups, bias is not None, old.padding_mode)
        else:
            raise ExportError(f"layer {name}: only Linear and Conv2d (subclasses) can be exported quantised")
        with torch.no_grad():
            new.weight.copy_(w)
            if bias is not None:
                new.bias.copy_(bias.detach().float())
        setattr(owner, leaf, new)
    return twin


class _Graph:
    """Small helper over an onnx GraphProto: unique names, constants, node insertion."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.g = model, model.graph
        self.inits = {i.name: i for i in self.g.initializer}
        self.n = 0
        self.pending: list = []
        self.shared: dict = {}

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}__q{self.n}"

    def const(self, base: str, array: np.ndarray) -> str:
        """An initializer; small constants (shapes, shifts, tables) are shared across layers."""
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 64 else None
        if key is not None and key in self.shared:
            return self.shared[key]
        name = self.name(base)
        self.g.initializer.append(numpy_helper.from_array(array, name))
        if key is not None:
            self.shared[key] = name
        return name

    def raw(self, base: str, dtype: int, dims, data: bytes) -> str:
        name = self.name(base)
        self.g.initializer.append(helper.make_tensor(name, dtype, list(dims), data, raw=True))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op.lower())
        return self._emit(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))

    def _emit(self, node) -> str:
        self.pending.append(node)
        return node.output[0]


def _find_weight(graph: _Graph, w: np.ndarray, name: str):
    """(initializer name, consumer node, orientation) of the float weight `w` in the exported graph."""
    want = {w.astype(np.float32).tobytes(): "as-is"}
    if w.ndim == 2:
        want[np.ascontiguousarray(w.T).astype(np.float32).tobytes()] = "transposed"
    found = [(i.name, want[numpy_helper.to_array(i).astype(np.float32).tobytes()])
             for i in graph.g.initializer if i.data_type == T.FLOAT and
             numpy_helper.to_array(i).size == w.size and numpy_helper.to_array(i).astype(np.float32).tobytes() in want]
    if len(found) != 1:
        raise ExportError(f"layer {name}: found its weight {len(found)} times in the exported graph "
                          "(expected once); layers with identical weights cannot be told apart")
    init_name, orient = found[0]
    users = [n for n in graph.g.node if init_name in n.input]
    if len(users) != 1 or users[0].op_type not in ("MatMul", "Gemm", "Conv"):
        raise ExportError(f"layer {name}: its weight feeds {[u.op_type for u in users]}, not one MatMul/Gemm/Conv")
    return init_name, users[0], orient


def _pack_words(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (< 2**bits) → uint32 words holding 32//bits codes each, lowest bits first."""
    k = 32 // bits
    flat = codes.astype(np.uint32).ravel()
    flat = np.concatenate([flat, np.zeros((-len(flat)) % k, np.uint32)]).reshape(-1, k)
    return (flat << (np.arange(k, dtype=np.uint32) * bits)).sum(axis=1, dtype=np.uint64).astype(np.uint32)


def _unpack(graph: _Graph, base: str, words: np.ndarray, bits: int, count: int) -> str:
    k = 32 // bits
    w = graph.const(f"{base}.codes_u{bits}x{k}", words.reshape(-1, 1))
    shifted = graph.node("BitShift", [w, graph.const("shifts", np.arange(k, dtype=np.uint32) * bits)],
                         direction="RIGHT")
    masked = graph.node("BitwiseAnd", [shifted, graph.const("mask", np.array([2 ** bits - 1], np.uint32))])
    flat = graph.node("Reshape", [masked, graph.const("flat", np.array([-1], np.int64))])
    return graph.node("Slice", [flat, graph.const("start", np.array([0], np.int64)),
                                graph.const("end", np.array([count], np.int64))])


def _weight_dq(graph: _Graph, name: str, lq: LayerQuant, orient: str, opset: int) -> tuple[str, str]:
    """Nodes producing the float weight in the graph's orientation; returns (output name, encoding)."""
    out, fan_in = lq.q.shape[0], int(np.prod(lq.q.shape[1:]))
    groups = lq.scale.shape[1]
    native = lq.fmt in _DQ_TYPES and (lq.fmt != "int4" or opset >= 21) and (
        groups == 1 or lq.q.ndim == 2)   # blocked DQ runs along one axis: fine for 2-D weights
    if native:
        q = lq.q if orient == "as-is" else lq.q.T
        axis = 0 if orient == "as-is" else 1
        if groups == 1:
            scale, zp_shape, attrs = lq.scale[:, 0], (out,), {"axis": axis}
        else:
            scale = lq.scale if orient == "as-is" else lq.scale.T
            zp_shape, attrs = scale.shape, {"axis": 1 - axis, "block_size": lq.group_size}
        codes = _typed_codes(graph, f"{name}.weight", lq.fmt, q)
        inputs = [codes, graph.const(f"{name}.w_scale", scale.astype(np.float32))]
        if lq.zero_point is not None:
            zp = lq.zero_point[:, 0] if groups == 1 else (lq.zero_point if orient == "as-is" else lq.zero_point.T)
            inputs.append(_typed_codes(graph, f"{name}.w_zero_point", lq.fmt, zp.reshape(zp_shape)))
        return graph.node("DequantizeLinear", inputs, **attrs), "dq-" + lq.fmt
    # Packed codes, unpacked and dequantised in the graph in torch orientation (out, groups, group_size).
    bits = format_bits(lq.fmt)
    if lq.fmt.startswith("int"):
        offset = 0 if lq.zero_point is not None else 2 ** (bits - 1)
        codes = (lq.q + offset).astype(np.uint32)
        vals = graph.node("Cast", [_unpack(graph, name, _pack_words(codes, bits), bits, codes.size)], to=T.FLOAT)
        zp = (lq.zero_point if lq.zero_point is not None else np.zeros_like(lq.scale)) + offset
        vals = graph.node("Sub", [graph.node("Reshape", [vals, graph.const("gshape", np.array(
            [out, groups, lq.group_size], np.int64))]), graph.const(f"{name}.w_zero_point", zp[..., None])])
        encoding = f"packed-{lq.fmt}"
    else:
        codes, lut = fp_grid_codes(lq.fmt, lq.q)
        idx = graph.node("Cast", [_unpack(graph, name, _pack_words(codes, bits), bits, codes.size)], to=T.INT32)
        vals = graph.node("Gather", [graph.const(f"{name}.lut_{lq.fmt}", lut), idx], axis=0)
        vals = graph.node("Reshape", [vals, graph.const("gshape", np.array([out, groups, lq.group_size], np.int64))])
        encoding = f"packed-lut-{lq.fmt}"
    w = graph.node("Mul", [vals, graph.const(f"{name}.w_scale", lq.scale[..., None].astype(np.float32))])
    w = graph.node("Reshape", [w, graph.const("wshape", np.array(lq.q.shape, np.int64))])
    if orient == "transposed":
        w = graph.node("Transpose", [w], perm=[1, 0])
    return w, encoding


def _typed_codes(graph: _Graph, base: str, fmt: str, q: np.ndarray) -> str:
    if fmt == "int8":
        return graph.const(base, q.astype(np.int8))
    if fmt == "int4":  # two's-complement nibbles, first element in the low nibble
        nib = (q.astype(np.int8).ravel() & 0x0F).astype(np.uint8)
        nib = np.concatenate([nib, np.zeros(len(nib) % 2, np.uint8)])
        return graph.raw(base, T.INT4, q.shape, (nib[0::2] | (nib[1::2] << 4)).tobytes())
    codes, _ = fp_grid_codes(fmt, q)
    return graph.raw(base, _DQ_TYPES[fmt], q.shape, codes.tobytes())


def _act_scale(graph: _Graph, x: str, act: ActQuant, axis: int, qmax: float) -> str:
    if not act.dynamic:
        return graph.const("act_scale", np.array(act.scale, np.float32))
    absx = graph.node("Abs", [x])
    if act.granularity == "per-token":
        amax = graph.node("ReduceMax", [absx, graph.const("axes", np.array([axis], np.int64))], keepdims=1)
    else:
        amax = graph.node("ReduceMax", [absx], keepdims=0)
    amax = graph.node("Max", [amax, graph.const("eps", np.array(1e-8, np.float32))])
    return graph.node("Div", [amax, graph.const("qmax", np.array(qmax, np.float32))])


def _act_codes(graph: _Graph, x: str, act: ActQuant, axis: int) -> tuple[str, str]:
    """(rounded activation codes as float, scale) for INT formats; (x/s cast through the FP format, s) for FP."""
    if act.fmt.startswith("int"):
        qmax = float(2 ** (act.bits - 1) - 1)
        s = _act_scale(graph, x, act, axis, qmax)
        r = graph.node("Round", [graph.node("Div", [x, s])])
        lim = [graph.const("lo", np.array(-qmax, np.float32)), graph.const("hi", np.array(qmax, np.float32))]
        return graph.node("Clip", [r, *lim]), s
    s = _act_scale(graph, x, act, axis, _FP_MAX[act.fmt])
    if act.fmt not in _CAST_TYPES:
        raise ExportError(f"activation format {act.fmt} has no ONNX cast type; use int2..int8, fp8 or fp4 activations")
    c = graph.node("Cast", [graph.node("Div", [x, s])], to=_CAST_TYPES[act.fmt], saturate=1)
    return graph.node("Cast", [c], to=T.FLOAT), s


def _rewrite_layer(graph: _Graph, name: str, lq: LayerQuant, spec: QuantSpec, opset: int) -> dict:
    init_name, node, orient = _find_weight(graph, lq.dequantized(), name)
    graph.pending = []
    if node.op_type == "Gemm":
        a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise ExportError(f"layer {name}: Gemm with transA/alpha/beta is not supported")
        orient = "as-is" if a.get("transB", 0) else "transposed"
    x = node.input[0]
    act = lq.act
    axis = 1 if node.op_type == "Conv" else -1
    integer = (act is not None and lq.fmt == "int8" and act.fmt == "int8" and lq.zero_point is None
               and node.op_type in ("MatMul", "Gemm") and spec.graph_form in ("auto", "integer"))
    if integer:
        codes, s_x = _act_codes(graph, x, act, axis)
        xq = graph.node("Cast", [codes], to=T.INT8)
        wq = lq.q.reshape(lq.q.shape[0], -1).T  # (in, out) for MatMulInteger
        acc = graph.node("MatMulInteger", [xq, graph.const(f"{name}.weight_int8", wq.astype(np.int8))])
        scale = graph.node("Mul", [s_x, graph.const(f"{name}.w_scale", lq.scale[:, 0].astype(np.float32))])
        y = graph.node("Mul", [graph.node("Cast", [acc], to=T.FLOAT), scale],
                       out=None if node.op_type == "Gemm" and len(node.input) > 2 else node.output[0])
        if node.op_type == "Gemm" and len(node.input) > 2:
            graph.node("Add", [y, node.input[2]], out=node.output[0])
        form, encoding = "integer", "int8-matmulinteger"
    else:
        if act is not None:
            codes, s_x = _act_codes(graph, x, act, axis)
            x = graph.node("Mul", [codes, s_x])
        w, encoding = _weight_dq(graph, name, lq, orient, opset)
        inputs = list(node.input)
        inputs[0], inputs[1] = x, w
        attrs = {at.name: helper.get_attribute_value(at) for at in node.attribute}
        graph.pending.append(helper.make_node(node.op_type, inputs, list(node.output), name=node.name, **attrs))
        form = "qdq"
    idx = list(graph.g.node).index(node)
    graph.g.node.remove(node)
    for k, n in enumerate(graph.pending):
        graph.g.node.insert(idx + k, n)
    graph.g.initializer.remove(graph.inits.pop(init_name))
    return {"name": name, "op": node.op_type, "fmt": lq.fmt, "granularity": lq.granularity, "encoding": encoding,
            "form": form, "act": act.to_dict() if act else None}


def export_quantized_onnx(model: nn.Module, spec: QuantSpec, input_shape: tuple[int, ...], path: str | Path,
                          opset: int | None = None, dynamic_batch: bool = True) -> dict:
    """Write the quantised graph of `model` described by `spec` to `path`; return the manifest's quant block."""
    opset = opset or QUANT_OPSET
    if opset < 19:
        raise ExportError(f"quantised ONNX graphs need opset >= 19 (FP8) or 21 (INT4); got {opset}")
    path = Path(path)
    model, spec = fold_batchnorm(model, spec)
    twin = float_twin(model, spec)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        export_onnx(twin, input_shape, tmp, opset=min(opset, 20), dynamic_batch=dynamic_batch)
        m = onnx.load(tmp)
    finally:
        os.unlink(tmp)
    if opset > 20:
        m = onnx.version_converter.convert_version(m, opset)
    graph = _Graph(m)
    layers = [_rewrite_layer(graph, name, lq, spec, opset) for name, lq in spec.layers.items()]
    del m.graph.value_info[:]
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    weights = sorted({(l["fmt"], l["granularity"]) for l in layers})
    options = dict(ORT_SESSION_CONFIG)
    if any(l["op"] == "Conv" and l["act"] for l in layers):
        # onnxruntime 1.32's extended-level graph rewrites miscompute per-token rounding in front of
        # convs (output collapses; the unoptimised graph matches torch): keep to basic-level rewrites.
        options["edgevit.graph_optimization_level"] = "basic"
    return {"precision": spec.precision, "opset": opset, "runtime_options": options,
            "graph_form": "+".join(sorted({l["encoding"] for l in layers})),
            "weights": {"formats": [f"{f}/{g}" for f, g in weights]},
            "activations": {"quantised_layers": sum(l["act"] is not None for l in layers)},
            "layers": layers}
