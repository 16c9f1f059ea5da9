"""Quantised ONNX graphs with real low-bit weights and in-graph activation quantisation.

The model is copied into a *twin*: quantised layers hold their dequantised weights (BatchNorm folded
into the per-channel scales), and every activation quantiser becomes an `ActQuantOp` that the exporter
writes as explicit rounding ops at its place (layer inputs, q/k/v of q·kᵀ and attn·v, softmax output,
LayerNorm/GELU inputs). The twin is exported with the shared FP32 exporter, each quantised layer's weight
entering as a graph input named `<layer>.weight` (so constant folding cannot merge a BatchNorm into it or
rename it: the weight is identified by construction, never by value); each such input is then replaced by
the layer's low-bit form, read directly by its Conv/Gemm/MatMul (Identity/Transpose in between dropped):

  int8, int4 (opset 21), fp8 e4m3fn/e5m2   → typed codes + DequantizeLinear (per-axis or blocked scales)
  int2/3/5/6/7, int4 per-group on convs    → codes packed 32//b per uint32 word, unpacked in-graph
                                              (BitShift, BitwiseAnd), minus offset, times scale
  fp4 e2m1, fp6 e2m3/e3m2                  → packed codes + Gather on the code→value table, times scale
  fp4 e2m1 linears with per-token e2m3     → int8 kernels (the default where exact): E2M1×2 weights decoded
    inputs (FP4DiT's W4A6)                    to int8, E2M3×8 activations to uint8 (+128), MatMulIntegerToFloat per
                                              scale group, scales applied to the exact int32 sums (_IntMatMulKind)

Every decoder reads initializers only, so onnxruntime folds it at session creation: weights are decoded once,
the file keeps the packed codes (the cost moves to session memory: runtimes.bench reports peak RSS).

The packed decoders and the dynamic activation quantisers are model-local functions, written once per
kind and called at each site (runtimes.onnx.functions): the file then holds little beyond the codes,
scales and biases. A layer's tensors are named after it as in W = (q − zp)·s: `<layer>.q`, `.s`, `.zp`. A ragged last scale group (fan_in not a multiple of the group size) is exact:
blocked DequantizeLinear takes ceil(fan_in / block) scales; packed decoders expand the scales to whole
groups and slice them to fan_in, so no padding codes are stored.

Scales quant/ stores as exact fp16 values are written as fp16 for sub-8-bit weights (cast up in the
graph), which keeps W4 files near 4.25 bits per weight. With INT8 weights and static 8-bit activations
the graph is plain QDQ, which onnxruntime fuses into integer kernels (the `qdq` graph form).
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import torch
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from torch import nn

from runtimes.errors import ExportError, ExportFailure
from runtimes.onnx.actquant import ActQuantOp, function_protos
from runtimes.onnx.export import export_onnx
from runtimes.onnx.functions import DOMAIN, Body, attach
from runtimes.onnx.session import PORTABLE_CONFIG
from runtimes.onnx.quantspec import LayerQuant, QuantSpec, format_bits, fp_grid_codes, spec_from_model

QUANT_OPSET = 21
# onnxruntime rewrites DequantizeLinear(int4/int8 weights) → MatMul into MatMulNBits, which by default
# (accuracy level 4) also quantises the activations to int8: not what a weight-only graph says. Level 0
# keeps float activations; the runner applies these options from the manifest.
# PORTABLE_CONFIG: exact integer kernels on x86 CPUs without VNNI (runtimes.onnx.session).
ORT_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0", **PORTABLE_CONFIG}
_DQ_TYPES = {"int8": T.INT8, "int4": T.INT4, "fp8_e4m3": T.FLOAT8E4M3FN, "fp8_e5m2": T.FLOAT8E5M2}

__all__ = ["export_quantized_onnx", "spec_from_model", "float_twin"]


def fold_batchnorm(model: nn.Module, spec: QuantSpec, fold: bool = True,
                   input_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, QuantSpec]:
    """Fold each BatchNorm that reads only a quantised conv's/linear's output into its scale, or with
    `fold=False` turn it into an explicit per-channel affine that stays apart from the layer.

    The pairs come from the torch.fx graph (quant.bn.norm_pairs: any module structure, e.g. timm's
    ConvNormAct / BatchNormAct2d, a ResNet block's conv1 → bn1, LeViT's Linear → BatchNorm1d; a model fx
    cannot trace is traced per BatchNorm parent) given `input_shape`, and from nn.Sequential adjacency.
    A norm-with-activation keeps its dropout and activation (same child names, so their quantisers keep
    theirs).

    Folding keeps the codes exact: BN scales output channels, so it multiplies the per-channel/per-group
    scales and leaves the grid values alone. But the folded weight is rounded differently from the
    fake-quant model's conv-then-BN, and dynamic activation rounding downstream amplifies that: on
    mobilenet-mini at fp4 w4a6 (per-token e2m3), the folded graph disagreed with torch on 1.3 % of test
    images, the unfolded one on none. So only graphs whose activations are all static 8-bit QDQ (where ORT
    needs the folded conv for QLinearConv) fold; the others get `_ChannelAffine`, torch's own BN arithmetic.
    """
    from quant.bn import NormPair, norm_act_parts, norm_pairs
    model = copy.deepcopy(model).eval()
    layers = dict(spec.layers)
    pairs = []
    if input_shape is not None:
        pairs = norm_pairs(model, torch.zeros((1, *input_shape[1:])), layers)
    paired = {p.layer for p in pairs} | {p.norm for p in pairs}
    for name, lq in spec.layers.items():   # nn.Sequential adjacency (also without an example input)
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if name in paired or not (isinstance(owner, nn.Sequential) and leaf.isdigit() and int(leaf) + 1 < len(owner)):
            continue
        norm = f"{parent}.{int(leaf) + 1}" if parent else str(int(leaf) + 1)
        bn = owner[int(leaf) + 1]
        if isinstance(bn, nn.BatchNorm2d) and norm_act_parts(bn) is not None and lq.q.ndim == 4 \
                and norm not in paired and bn.running_mean is not None:
            pairs.append(NormPair(name, norm, (1, -1, 1, 1)))
    for pair in pairs:
        lq, bn = layers[pair.layer], model.get_submodule(pair.norm)
        layer = model.get_submodule(pair.layer)
        affine = _ChannelAffine(bn, pair.view)
        if fold:
            w = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
            gamma = (w / torch.sqrt(bn.running_var + bn.eps)).numpy().astype(np.float32)
            b = layer.bias.detach().numpy() if getattr(layer, "bias", None) is not None else 0.0
            mean = bn.running_mean.detach().numpy()
            beta = bn.bias.detach().numpy() if bn.bias is not None else 0.0
            layers[pair.layer] = LayerQuant(lq.fmt, lq.q, lq.scale * gamma[:, None], lq.zero_point, group=lq.group)
            layer.bias = nn.Parameter(torch.from_numpy(((b - mean) * gamma + beta).astype(np.float32)))
        _replace(model, pair.norm, _AfterNorm(None if fold else affine, {n: getattr(bn, n) for n in norm_act_parts(bn)}))
    # every other eval BatchNorm2d (one on a block's input, after a float op, …) as torch computes it too:
    # onnxruntime's BatchNormalization kernel rounds differently, which activation rounding downstream amplifies
    for name, bn in list(model.named_modules()):
        if isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_mean is not None \
                and norm_act_parts(bn) is not None:
            _replace(model, name, _AfterNorm(_ChannelAffine(bn), {n: getattr(bn, n) for n in norm_act_parts(bn)}))
    return model, QuantSpec(spec.precision, layers, spec.acts)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


class _ChannelAffine(nn.Module):
    """Eval BatchNorm as torch's CPU kernel computes it, y = x·α + β (α = w/√(var+ε), β = b − mean·α),
    written as Mul/Add so the ONNX exporter keeps it apart from the conv; α, β shaped `view`."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, view: tuple[int, ...] = (1, -1, 1, 1)):
        super().__init__()
        with torch.no_grad():
            alpha = 1 / torch.sqrt(bn.running_var + bn.eps)
            alpha = bn.weight * alpha if bn.weight is not None else alpha
            beta = (bn.bias if bn.bias is not None else 0) - bn.running_mean * alpha
        self.register_buffer("alpha", alpha.detach().reshape(view).clone())
        self.register_buffer("beta", beta.detach().reshape(view).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha + self.beta


class _AfterNorm(nn.Module):
    """What is left of a BatchNorm once folded (nothing, or its `_ChannelAffine`), then what the norm module
    applied after normalising (timm's BatchNormAct2d: `drop`, `act`), under the same child names."""

    def __init__(self, affine: nn.Module | None, after: dict[str, nn.Module]):
        super().__init__()
        self.affine = affine
        self.order = list(after)
        for n, m in after.items():
            setattr(self, n, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine is not None:
            x = self.affine(x)
        for n in self.order:
            x = getattr(self, n)(x)
        return x


def float_twin(model: nn.Module, spec: QuantSpec, activations: bool = False, functions: bool = False) -> nn.Module:
    """A copy of `model` with the dequantised low-bit weights, in ops any exporter can trace.

    Quantised layers keep their class but hold the dequantised weight (their weight quantiser is
    dropped). Activation quantisers named in `spec.acts` become identities, or with `activations`
    an ActQuantOp each (same values in torch, explicit rounding ops in ONNX; with `functions` as
    calls of one model-local function per quantiser kind).
    """
    twin = copy.deepcopy(model).eval()
    for name, lq in spec.layers.items():
        layer = twin.get_submodule(name)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ExportError(f"layer {name}: only Linear and Conv2d (subclasses) can be exported quantised")
        with torch.no_grad():
            layer.weight.data = torch.from_numpy(lq.dequantized()).reshape(layer.weight.shape).clone()
        if hasattr(layer, "weight_quant"):
            layer.weight_quant = None
            layer._wq_key = None
    for name, aq in spec.acts.items():
        parent, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, leaf,
                ActQuantOp(aq, as_function=functions) if activations else nn.Identity())
    return twin


class _Graph:
    """Small helper over an onnx GraphProto: unique names, constants, node insertion."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.g = model, model.graph
        self.inits = {i.name: i for i in self.g.initializer}
        self.n = 0
        self.used = set(self.inits) | {o for n in self.g.node for o in n.output}
        self.pending: list = []
        self.shared: dict = {}
        self.functions: dict = {}   # packed-weight decoder kinds used, by function name
        self.used |= {i.name for i in self.g.input}

    def name(self, base: str) -> str:
        """`base` itself while unused (layer-named tensors stay short and readable), else base_<n>."""
        self.n += 1
        name = base if base not in self.used else f"{base}_{self.n}"
        self.used.add(name)
        return name

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

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        """A node (`domain::Op` for a function call) appended to the pending list."""
        domain, _, op = op.rpartition("::")
        out = self.name(op.lower())
        self.pending.append(helper.make_node(op, inputs, [out], domain=domain or None, **attrs))
        return out

    def weight_uses(self, name: str, layer: str) -> list[tuple[onnx.NodeProto, int, str]]:
        """Where the graph input `name` (a quantised layer's weight, runtimes.onnx.quantized._WeightsAsInputs)
        is read: (node, input index, orientation) per use. Identity and 2-D Transpose nodes in between are
        looked through (the node is the one after them; a Transpose flips the orientation); anything else
        (a Reshape, a conv weight's Transpose) reads the weight as it is, and keeps doing so."""
        consumers: dict[str, list] = {}
        for n in self.g.node:
            for k, i in enumerate(n.input):
                consumers.setdefault(i, []).append((n, k))
        if name in {o.name for o in self.g.output}:
            raise ExportFailure(f"layer {layer}: its weight is a graph output; keep it float with --keep-float {layer}")
        out, todo = [], [(n, k, "as-is") for n, k in consumers.get(name, [])]
        while todo:
            n, k, orient = todo.pop(0)
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            through = n.op_type == "Identity" or (n.op_type == "Transpose" and perm == [1, 0])
            nxt = consumers.get(n.output[0], []) if through else []
            if through and nxt and n.output[0] not in {o.name for o in self.g.output}:
                flip = {"as-is": "transposed", "transposed": "as-is"}
                todo += [(m, j, flip[orient] if n.op_type == "Transpose" else orient) for m, j in nxt]
            else:
                out.append((n, k, orient))
        return out

    def prune(self) -> None:
        """Remove nodes whose outputs nobody reads (the Identity/Transpose left behind by weight rewrites)."""
        while True:
            read = {i for n in self.g.node for i in n.input} | {o.name for o in self.g.output}
            dead = [n for n in self.g.node if n.op_type in ("Identity", "Transpose") and not read & set(n.output)]
            if not dead:
                return
            for n in dead:
                self.g.node.remove(n)


def _pack_words(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (< 2**bits) → uint32 words holding 32//bits codes each, lowest bits first."""
    k = 32 // bits
    flat = codes.astype(np.uint32).ravel()
    flat = np.concatenate([flat, np.zeros((-len(flat)) % k, np.uint32)]).reshape(-1, k)
    return (flat << (np.arange(k, dtype=np.uint32) * bits)).sum(axis=1, dtype=np.uint64).astype(np.uint32)


def _weight_dq(graph: _Graph, name: str, lq: LayerQuant, orient: str, opset: int,
               weight_only: bool = False) -> tuple[str, str]:
    """Nodes producing the float weight in the graph's orientation; returns (output name, encoding).

    `weight_only` (no activation is quantised): the packed form even for int8/int4/fp8, whose plain-op decoder
    onnxruntime folds at session creation; it keeps a DequantizeLinear on an initializer unfolded (for its QDQ
    fusions), so a DQ weight-only graph decoded every weight on every run (INT4 W4A32 vit-small: 0.85× FP32)."""
    out = lq.q.shape[0]
    groups = lq.scale.shape[1]
    bits = format_bits(lq.fmt)
    half = lq.scale_dtype == "float16" and bits < 8
    native = lq.fmt in _DQ_TYPES and (lq.fmt != "int4" or opset >= 21) and (
        groups == 1 or lq.q.ndim == 2) and not weight_only   # blocked DQ runs along one axis: fine for 2-D weights
    if native:
        q = lq.q if orient == "as-is" else lq.q.T
        axis = 0 if orient == "as-is" else 1
        if groups == 1:
            scale, zp_shape, attrs = lq.scale[:, 0], (out,), {"axis": axis}
        else:
            scale = lq.scale if orient == "as-is" else lq.scale.T
            zp_shape, attrs = scale.shape, {"axis": 1 - axis, "block_size": lq.group_size}
        codes = _typed_codes(graph, f"{name}.q", lq.fmt, q)
        scale_in = graph.const(f"{name}.s", scale.astype(np.float16 if half else np.float32))
        if half:   # cast before DQ: q·s in fp16 would round (7·s needs 14 mantissa bits)
            scale_in = graph.node("Cast", [scale_in], to=T.FLOAT)
        inputs = [codes, scale_in]
        if lq.zero_point is not None:
            zp = lq.zero_point[:, 0] if groups == 1 else (lq.zero_point if orient == "as-is" else lq.zero_point.T)
            inputs.append(_typed_codes(graph, f"{name}.zp", lq.fmt, zp.reshape(zp_shape)))
        elif lq.fmt == "int8":
            # Explicit zeros, one per scale: onnxruntime's exact x86 path (runtimes.onnx.session) re-biases
            # int8 weights to uint8 and, given no zero point, makes a scalar one that per-axis and blocked
            # DequantizeLinear reject.
            inputs.append(_typed_codes(graph, f"{name}.zp", lq.fmt, np.zeros(zp_shape, np.int8)))
        return graph.node("DequantizeLinear", inputs, **attrs), "dq-" + lq.fmt
    # Packed codes, decoded by a shared function (one per kind) in torch orientation (out, groups, group_size)
    if lq.fmt.startswith("int"):
        offset = 0 if lq.zero_point is not None else 2 ** (bits - 1)
        codes = (lq.q + offset).astype(np.uint32)
        encoding = f"packed-{lq.fmt}"
    else:
        codes = fp_grid_codes(lq.fmt, lq.q)[0]
        encoding = f"packed-lut-{lq.fmt}"
    kind = _PackedKind(lq.fmt, lq.zero_point is not None, half, orient == "transposed", lq.pad > 0)
    inputs = [graph.const(f"{name}.q", _pack_words(codes, bits).reshape(-1, 1)),
              graph.const(f"{name}.s", lq.scale[..., None].astype(np.float16 if half else np.float32))]
    if kind.zero_point:
        inputs.append(graph.const(f"{name}.zp", lq.zero_point[..., None].astype(np.float32)))
    inputs.append(graph.const("wshape", np.array(lq.q.shape, np.int64)))
    if kind.ragged:
        inputs.append(graph.const("gshape", np.array([out, groups, lq.group_size], np.int64)))
    graph.functions.setdefault(kind.name, kind)
    return graph.node(f"{DOMAIN}::{kind.name}", inputs), encoding


class _PackedKind(NamedTuple):
    """One packed-weight decoder function: format, asymmetric, fp16 scales, transposed, ragged last group;
    `integer`: the FP grid values × INT_GRID_FACTOR as int8, unscaled (the integer matmul form's weights)."""
    fmt: str
    zero_point: bool
    half: bool
    transposed: bool
    ragged: bool
    integer: bool = False

    @property
    def name(self) -> str:
        return "dq_" + "_".join([self.fmt] + [t for t, on in (("zp", self.zero_point), ("f16", self.half),
                                                             ("t", self.transposed), ("pad", self.ragged),
                                                             ("i8", self.integer)) if on])

    def function(self, opset: int) -> onnx.FunctionProto:
        """words (n, 1) uint32 → codes (BitShift, BitwiseAnd) → values (minus offset or LUT Gather) × scale.

        Shapes come from the scale and `wshape` inputs; a ragged kind keeps values (out, fan_in) and
        expands scales (and zero points) to whole groups (`gshape`), then slices them to fan_in.
        """
        bits = format_bits(self.fmt)
        k = 32 // bits
        b = Body(["words"] + ([] if self.integer else ["scale"]) + (["zero_point"] if self.zero_point else [])
                 + ["wshape"] + (["gshape"] if self.ragged else []))
        i64 = lambda v: b.const(v, np.int64)   # noqa: E731
        codes = b.op("BitwiseAnd", b.op("BitShift", "words", b.const(np.arange(k) * bits, np.uint32), direction_s="RIGHT"),
                     b.const([2 ** bits - 1], np.uint32))
        count = b.op("ReduceProd", "wshape", keepdims_i=1)   # the last word may hold unused slots
        codes = b.op("Slice", b.op("Reshape", codes, i64([-1])), i64([0]), count)
        if self.integer:
            lut = fp_grid_codes(self.fmt, np.zeros(1, np.float32))[1] * INT_GRID_FACTOR[self.fmt]
            w = b.op("Reshape", b.op("Gather", b.const(lut, np.int8), b.op("Cast", codes, to_i=T.INT32), axis_i=0), "wshape")
            return b.function(self.name, b.op("Transpose", w, perm_i=[1, 0]) if self.transposed else w, opset)
        # values as (out, groups, group_size) for the (out, groups, 1) scales; ragged: (out, fan_in)
        rows = b.op("Slice", b.op("Shape", "scale"), i64([0]), i64([2 if not self.ragged else 1]))
        layout = b.op("Concat", rows, i64([-1]), axis_i=0)

        def per_column(t):   # ragged: (out, groups, 1) → (out, fan_in), each group's value over its columns
            if not self.ragged:
                return t
            full = b.op("Reshape", b.op("Expand", t, "gshape"), i64([0, -1]))
            cols = b.op("ReduceProd", b.op("Slice", "wshape", i64([1]), i64([8])), keepdims_i=1)
            return b.op("Slice", full, i64([0]), cols, i64([1]))

        if self.fmt.startswith("int"):
            vals = b.op("Reshape", b.op("Cast", codes, to_i=T.FLOAT), layout)
            vals = b.op("Sub", vals, per_column("zero_point") if self.zero_point else b.const(2.0 ** (bits - 1)))
        else:
            lut = fp_grid_codes(self.fmt, np.zeros(1, np.float32))[1]
            vals = b.op("Reshape", b.op("Gather", b.const(lut), b.op("Cast", codes, to_i=T.INT32), axis_i=0), layout)
        w = b.op("Mul", vals, per_column(b.op("Cast", "scale", to_i=T.FLOAT) if self.half else "scale"))
        w = b.op("Reshape", w, "wshape")
        if self.transposed:
            w = b.op("Transpose", w, perm_i=[1, 0])
        return b.function(self.name, w, opset)


# FP grids whose values times a power of two are integers that fit int8 (an E2M1 × E2M3 product is exact on
# int8 kernels with int32 accumulation): weight formats, and per-token activation quantiser functions.
INT_GRID_FACTOR = {"fp4_e2m1": 2}                                  # E2M1 × 2 ∈ {0, ±1, ±2, ±3, ±4, ±6, ±8, ±12}
INT_ACT_FUNCTIONS = {"aq_e2m3_token_axm1": ("e2m3", 8)}            # E2M3 × 8: integers of magnitude ≤ 60


class _IntMatMulKind(NamedTuple):
    """x → per-token E2M3 rounding (Veltkamp above 1, the QuantizeLinear's own rounding at step 1/8 below:
    `_Emitter.round_above_step`) → ×8 as uint8 (+128) → per weight group (a Slice along fan_in) onnxruntime's
    MatMulIntegerToFloat with the int8 weight (E2M1 × 2): int32 sums, exact, × group scale/16 in the GEMM's
    epilogue → summed over groups → × token scale.

    Each group's weight×activation sum is exact instead of float32 (the torch model's F.linear), so the outputs
    differ from it by float32 rounding only, as the float-matmul form's do. On x86 without VNNI the u8×s8 kernels'
    int16 pair sums cannot saturate here: |a| ≤ 60 (188 once shifted to uint8) and |w| ≤ 12 give pair sums ≤ 4512.
    """
    act: str
    weight: str
    groups: tuple[int, ...]   # fan_in columns per scale group (the last may be shorter)

    @property
    def name(self) -> str:
        g = "" if len(self.groups) == 1 else "_g" + "_".join(map(str, self.groups))
        return f"imm_{self.act}_{self.weight}{g}"

    def function(self, opset: int) -> onnx.FunctionProto:
        import quant
        from runtimes.onnx.actquant import _Emitter
        fmt, factor = quant.parse_format(self.act), INT_ACT_FUNCTIONS[f"aq_{self.act}_token_axm1"][1]
        n = len(self.groups)
        ws, ss = [f"w{i}" for i in range(n)], [f"s{i}" for i in range(n)]
        b = Body(["x", *ws, *ss])
        e = _Emitter(b)
        amax = e.reduce("ReduceMax", b.op("Abs", "x"), -1)
        s = b.op("Max", b.op("Div", amax, e.c(fmt.max)), e.c(1e-12))
        # grid value × factor + 128 as uint8 (exact: |value × factor| ≤ 60): onnxruntime's fast x86 kernels are
        # u8×s8; its s8×s8 MatMulInteger ran 3.5× slower than the FP32 MatMul on deit_tiny
        zp = e.c(128, np.uint8)
        # the QuantizeLinear at step 1/factor (E2M3's subnormal step) does the last rounding (round_above_step)
        assert 2.0 ** (fmt.emin - fmt.man_bits) == 1.0 / factor
        q = b.op("QuantizeLinear", e.round_above_step(b.op("Div", "x", s), fmt), e.c(1.0 / factor), zp)
        parts = [q] if n == 1 else _split(b, q, self.groups)
        unit = e.c(1.0 / (factor * INT_GRID_FACTOR[self.weight]))
        # onnxruntime's MatMulIntegerToFloat: the same u8×s8 GEMM with int32 sums, the scales applied in its
        # epilogue (int32 → float × unit × group scale, the same two roundings as Cast then Mul, 2 fewer passes
        # over the output); the scales are initializer-only and fold at session creation
        acc = [b.op("com.microsoft::MatMulIntegerToFloat", p, w, unit, b.op("Cast", sc, to_i=T.FLOAT), zp)
               for p, w, sc in zip(parts, ws, ss)]
        total = acc[0] if n == 1 else b.op("Sum", *acc)
        return b.function(self.name, b.op("Mul", total, s), opset)


def _split(b: Body, x: str, sizes: tuple[int, ...]) -> list[str]:
    """Slices of x along the last axis (one Slice per part: Body nodes have one output)."""
    out, start = [], 0
    for size in sizes:
        out.append(b.op("Slice", x, b.const([start], np.int64), b.const([start + size], np.int64),
                        b.const([-1], np.int64)))
        start += size
    return out


def _integer_matmul(graph: _Graph, name: str, lq: LayerQuant, node: onnx.NodeProto, k: int, orient: str,
                    producer: onnx.NodeProto | None, readers: int) -> str | None:
    """Turn `node` (MatMul reading the layer's weight, its input a per-token E2M3 quantiser call read by it alone)
    into the integer-matmul call when that is exact: FP4 E2M1 weights with fp16 scales per channel or per group.
    Returns the encoding tag, or None (the node is left alone)."""
    if not (node.op_type == "MatMul" and k == 1 and orient == "transposed" and lq.fmt in INT_GRID_FACTOR
            and lq.q.ndim == 2 and lq.zero_point is None and lq.scale_dtype == "float16"
            and producer is not None and producer.domain == DOMAIN and producer.op_type in INT_ACT_FUNCTIONS
            and readers == 1):
        return None
    fan_in, groups = lq.q.shape[1], lq.scale.shape[1]
    size = fan_in if groups == 1 else lq.group_size
    sizes = tuple(min(size, fan_in - g * size) for g in range(groups))
    kind = _PackedKind(lq.fmt, False, False, True, False, integer=True)
    graph.functions.setdefault(kind.name, kind)
    codes = fp_grid_codes(lq.fmt, lq.q)[0]
    weights, scales, start = [], [], 0
    for g, width in enumerate(sizes):
        part = codes[:, start:start + width]
        words = graph.const(f"{name}.q", _pack_words(part, format_bits(lq.fmt)).reshape(-1, 1))
        weights.append(graph.node(f"{DOMAIN}::{kind.name}", [words, graph.const("wshape", np.array(part.shape, np.int64))]))
        scales.append(graph.const(f"{name}.s", lq.scale[:, g].astype(np.float16)))
        start += width
    mm = _IntMatMulKind(INT_ACT_FUNCTIONS[producer.op_type][0], lq.fmt, sizes)
    graph.functions.setdefault(mm.name, mm)
    node.op_type, node.domain = mm.name, DOMAIN
    del node.input[:]
    node.input.extend([producer.input[0], *weights, *scales])
    graph.g.node.remove(producer)
    return f"int8-matmul-{lq.fmt}"


def _typed_codes(graph: _Graph, base: str, fmt: str, q: np.ndarray) -> str:
    if fmt == "int8":   # never shared: onnxruntime re-biases each int8 weight and zero point to uint8 in place
        return graph.raw(base, T.INT8, q.shape, q.astype(np.int8).tobytes())
    if fmt == "int4":  # two's-complement nibbles, first element in the low nibble
        nib = (q.astype(np.int8).ravel() & 0x0F).astype(np.uint8)
        nib = np.concatenate([nib, np.zeros(len(nib) % 2, np.uint8)])
        return graph.raw(base, T.INT4, q.shape, (nib[0::2] | (nib[1::2] << 4)).tobytes())
    codes, _ = fp_grid_codes(fmt, q)
    return graph.raw(base, _DQ_TYPES[fmt], q.shape, codes.tobytes())


def _rewrite_layer(graph: _Graph, name: str, lq: LayerQuant, opset: int, integer_fp: bool = True,
                   weight_only: bool = False) -> dict:
    """Replace the graph input `<name>.weight` (the layer's weight, passed in by construction) by its low-bit
    form feeding each reader directly (Identity/Transpose between dropped), placed before the first reader.

    A module called more than once (CoaT's shared position encodings) has several readers: each gets its own
    decoder and codes, since onnxruntime rewrites a DequantizeLinear's int8 initializers in place per reader
    ("Attempt to replace the existing tensor" when two readers share them)."""
    source = weight_input(name)
    uses = graph.weight_uses(source, name)
    outputs: list[tuple[str, str]] = []
    order = list(graph.g.node)
    first = min((order.index(n) for n, _, _ in uses), default=0)
    graph.pending = []
    producers = {o: n for n in graph.g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in graph.g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    for node, k, orient in uses:
        x = node.input[0] if node.input else ""
        tag = _integer_matmul(graph, name, lq, node, k, orient, producers.get(x), readers.get(x, 0)) \
            if integer_fp and len(uses) == 1 else None
        if tag is not None:
            outputs.append((node.output[0], tag))
            continue
        outputs.append(_weight_dq(graph, name, lq, orient, opset, weight_only))
        node.input[k] = outputs[-1][0]
    nodes = list(graph.g.node)   # an integer-matmul rewrite removed the quantiser call before its reader
    first = min((nodes.index(n) for n, _, _ in uses), default=first)
    for j, n in enumerate(graph.pending):
        graph.g.node.insert(first + j, n)
    graph.g.input.remove(next(i for i in graph.g.input if i.name == source))
    direct = [n.op_type for n, k, _ in uses if n.op_type in ("MatMul", "Gemm", "Conv") and k == 1]
    direct += ["MatMulIntegerToFloat" for n, _, _ in uses if n.op_type.startswith("imm_")]   # the int8-matmul form
    encoding = outputs[0][1] if outputs else "unused"
    return {"name": name, "op": (direct or [n.op_type for n, _, _ in uses] or ["none"])[0], "fmt": lq.fmt,
            "granularity": lq.granularity, "encoding": encoding,
            "scale_dtype": "float16" if lq.scale_dtype == "float16" and format_bits(lq.fmt) < 8 else "float32"}


def weight_input(layer: str) -> str:
    """The graph input that carries `layer`'s weight through the TorchScript export."""
    return f"{layer}.weight"


class _WeightsAsInputs(nn.Module):
    """`twin` with the quantised layers' weights taken as inputs after the image.

    The TorchScript exporter folds constants: an eval BatchNorm into the conv before it, a Linear's
    transpose into a new initializer, and renames what it folded; a weight that enters as a graph input
    cannot be folded or renamed, so each layer's weight is found in the exported graph by its name — by
    construction, whatever the model's module structure — and replaced there by its low-bit decoder.
    """

    def __init__(self, twin: nn.Module, layers: list[str]):
        super().__init__()
        self.twin = twin
        self.layers = [twin.get_submodule(n) for n in layers]
        self.weights = tuple(m._parameters.pop("weight").detach() for m in self.layers)
        for m, w in zip(self.layers, self.weights):
            m.weight = w   # a plain attribute from here on (forward sets it to the traced input)

    def forward(self, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        for m, w in zip(self.layers, weights):   # module attributes, not functional_call: jit tracing
            m.weight = w
        return self.twin(x)


def _check_integer_form(spec: QuantSpec) -> None:
    bad = [n for n, lq in spec.layers.items() if lq.fmt != "int8"]
    bad += [n for n, a in spec.acts.items() if a.granularity != "per-tensor" or a.fmt not in ("int8", "uint8")]
    if bad:
        raise ExportError(f"the integer graph form needs int8 weights and static 8-bit activations everywhere "
                          f"({bad[0]} is not); quantise with --fmt int --bits w8a8 or use --graph-form exact")


def _graph_form(layers: list[dict], spec: QuantSpec) -> str:
    """A short tag for the manifest and bench tables: how weight×activation products are expressed.

    qdq-int8: int8 per-channel weights and static 8-bit activations as QDQ (ORT fuses to integer kernels);
    otherwise `<weight encodings>/<activation formats>` with activations rounded in float ops.
    """
    acts = list(spec.acts.values())
    static8 = bool(acts) and all(a.granularity == "per-tensor" and a.fmt in ("int8", "uint8") for a in acts)
    if layers and all(l["fmt"] == "int8" for l in layers) and static8:
        return "qdq-int8"
    kinds = "+".join(sorted({l["encoding"] for l in layers})) or "float"
    act = "+".join(sorted({f"{a.fmt}-{a.granularity}" for a in acts})) or "a-float"
    return f"{kinds}/{act}"


GRAPH_FORMS = ("exact", "integer", "float-matmul")


def export_quantized_onnx(model: nn.Module, spec: QuantSpec, input_shape: tuple[int, ...], path: str | Path,
                          opset: int | None = None, dynamic_batch: bool = True, graph_form: str = "exact",
                          calib_inputs: np.ndarray | None = None) -> dict:
    """Write the quantised graph of `model` described by `spec` to `path`; return the manifest's quant block.

    graph_form "exact" rounds only where the torch model rounds, and runs FP4 W4A6 linear layers (E2M1 weights
    per channel, per-token E2M3 inputs) on int8 kernels, where that is exact (`_IntMatMulKind`);
    "float-matmul" is the same rounding with every weight×activation product in float ops (for comparison);
    "integer" (w8a8 with static 8-bit activations) also requantises conv outputs, residual adds and the pooled
    features, and gives the head an int32 bias (runtimes.onnx.requant), calibrated on `calib_inputs`, so
    onnxruntime runs QLinearConv/QLinearAdd/QLinearGlobalAveragePool/QGemm end to end.
    """
    opset = opset or QUANT_OPSET
    if opset < 19:
        raise ExportError(f"quantised ONNX graphs need opset >= 19 (FP8) or 21 (INT4); got {opset}")
    if graph_form not in GRAPH_FORMS:
        raise ExportError(f"graph form {graph_form!r}: use one of {', '.join(GRAPH_FORMS)}")
    if graph_form == "integer":
        _check_integer_form(spec)
        if calib_inputs is None or not len(calib_inputs):
            raise ExportError("the integer graph form needs calibration images for its requantisation scales")
    path = Path(path)
    static8 = all(a.granularity == "per-tensor" and a.fmt in ("int8", "uint8") for a in spec.acts.values())
    model, spec = fold_batchnorm(model, spec, fold=static8, input_shape=input_shape)
    twin = float_twin(model, spec, activations=True, functions=True)
    m = export_weights_as_inputs(twin, spec, input_shape, min(opset, 20), dynamic_batch, path.parent)
    if opset > 20:
        m = onnx.version_converter.convert_version(m, opset)
    graph = _Graph(m)
    layers = [_rewrite_layer(graph, name, lq, opset, integer_fp=graph_form == "exact", weight_only=not spec.acts)
              for name, lq in spec.layers.items()]
    graph.prune()
    called = {n.op_type for n in m.graph.node if n.domain == DOMAIN}
    attach(m, {**function_protos(called, opset), **{k: v.function(opset) for k, v in graph.functions.items()}})
    requant = {"requantised_outputs": 0, "int32_biases": 0}
    if graph_form == "integer":
        from runtimes.onnx.requant import add_integer_requant
        requant = add_integer_requant(m, calib_inputs)
    del m.graph.value_info[:]
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    weights = sorted({(l["fmt"], l["granularity"]) for l in layers})
    return {"precision": spec.precision, "opset": opset, "runtime_options": dict(ORT_SESSION_CONFIG),
            "graph_form": _graph_form(layers, spec) + ("+requant" if graph_form == "integer" else ""),
            **requant,
            "weights": {"formats": [f"{f}/{g}" for f, g in weights]},
            "activations": {"quantisers": len(spec.acts),
                            "formats": sorted({f"{a.fmt}/{a.granularity}" for a in spec.acts.values()}),
                            "in_graph": {n: a.to_dict() for n, a in spec.acts.items()}},
            "layers": layers}


def export_weights_as_inputs(twin: nn.Module, spec: QuantSpec, input_shape: tuple[int, ...], opset: int,
                             dynamic_batch: bool = True, workdir: str | Path | None = None) -> onnx.ModelProto:
    """The TorchScript export of `twin` with each quantised layer's weight entering as the graph input
    `weight_input(layer)` (see _WeightsAsInputs), its other parameters under the model's own names.

    Shared by this exporter and the QNN bundle (runtimes.qnn.bundle), which both find a layer's weight
    in the graph by that name, never by value. An exporter error → ExportFailure naming the module.
    """
    names = list(spec.layers)
    wrapper = _WeightsAsInputs(twin, names)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=workdir)
    os.close(fd)
    try:
        with _where(twin) as stack:
            try:
                export_onnx(wrapper, input_shape, tmp, opset=opset,
                            dynamic_batch=dynamic_batch, input_names=("input", *map(weight_input, names)),
                            extra_inputs=wrapper.weights)
            except ExportError:
                raise
            except Exception as e:   # noqa: BLE001 — the exporter's own errors: say where and what to do
                raise _export_failure(e, stack, spec, wrapper,
                                      (torch.zeros((1, *input_shape[1:])), *wrapper.weights)) from e
        m = onnx.load(tmp)
    finally:
        os.unlink(tmp)
    _strip_wrapper_names(m)
    return m


def _strip_wrapper_names(m: onnx.ModelProto) -> None:
    """Names the wrapper adds (`twin.<param>`, `/twin/<scope>/…`) → the model's own, as a plain export names them."""
    g = m.graph
    names = {i.name for i in g.initializer} | {o for n in g.node for o in n.output}
    taken = names | {i.name for i in g.input} | {o.name for o in g.output}
    rename = {}
    for t in names:
        for prefix, repl in (("twin.", ""), ("/twin/", "/")):
            if t.startswith(prefix) and repl + t[len(prefix):] not in taken:
                rename[t] = repl + t[len(prefix):]
    for i in g.initializer:
        i.name = rename.get(i.name, i.name)
    for v in g.value_info:
        v.name = rename.get(v.name, v.name)
    for n in g.node:
        n.name = "/" + n.name[len("/twin/"):] if n.name.startswith("/twin/") else n.name
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]


class _where:
    """The module path being traced while the exporter runs (innermost last), to name a failing layer."""

    def __init__(self, model: nn.Module):
        self.names = {id(m): n for n, m in model.named_modules() if n}
        self.stack: list[str] = []

    def __enter__(self) -> list[str]:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        def pre(m, _inputs):
            if id(m) in self.names:
                self.stack.append(self.names[id(m)])

        def post(m, _inputs, _out):
            if id(m) in self.names and self.stack and self.stack[-1] == self.names[id(m)]:
                self.stack.pop()
        self.handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
        return self.stack

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _export_failure(e: Exception, stack: list[str], spec: QuantSpec, wrapper: nn.Module,
                    inputs: tuple) -> ExportFailure:
    """One line: where the TorchScript exporter failed, why (its first line), and what to try instead.

    Where: the module being traced when tracing fails, else the scope of the first graph node with the
    op the conversion names ("Exporting the operator 'aten::X' ... is not supported")."""
    text = str(e)
    why = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    why = why if len(why) <= 160 else why[:157] + "..."
    layer = stack[-1] if stack else _scope_of_failing_op(text, wrapper, inputs)
    if layer:
        quantised = [n for n in spec.layers if n == layer or n.startswith(layer + ".")]
        hint = (f"keep it float with `edgevit quantize ... --keep-float {layer}`" if quantised else
                "the module does not convert with the TorchScript exporter whatever its precision (export the float "
                "model to confirm); replace it in the model, or use the dynamo exporter "
                "(torch.onnx.export(..., dynamo=True), needs onnxscript) where it works")
        return ExportFailure(f"module {layer} ({type(e).__name__}): {why}; {hint}")
    return ExportFailure(f"the TorchScript exporter failed ({type(e).__name__}): {why}; export the float model to "
                         "see whether it exports at all, keep the failing layers float with --keep-float, or use "
                         "the dynamo exporter (needs onnxscript) where it works")


def _scope_of_failing_op(text: str, wrapper: nn.Module, inputs: tuple) -> str | None:
    """Module path (`blocks.0.attn`) of the first traced node running the op an exporter message names
    ("Exporting the operator 'aten::X' ... is not supported"): the model is traced again to read its scope."""
    import re
    op = re.search(r"operator '([\w:.]+)'", text)
    if op is None:
        return None
    try:
        with torch.no_grad():
            graph = torch.jit.trace(wrapper, inputs, check_trace=False).inlined_graph
    except Exception:   # noqa: BLE001 — only a better message is at stake
        return None
    for node in graph.nodes():
        if node.kind() == op.group(1):
            name = node.scopeName().rsplit("/", 1)[-1].removeprefix("__module.").removeprefix("twin")
            return name.removeprefix(".") or None
    return None
