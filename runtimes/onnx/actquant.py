"""Activation quantisers as ONNX graph ops, placed exactly where the torch model rounds.

`ActQuantOp(aq)` replaces a quant.ActQuantizer in the model copy that gets exported. In torch it
runs quant's own quantiser (rebuilt from the description), so the exported twin computes what the
fake-quant model computes; during `torch.onnx.export` a custom symbolic writes the same rounding:

  INT, static per tensor    → [Clip] → QuantizeLinear → DequantizeLinear (uint8 + zero point, or int8):
                              the QDQ pairs onnxruntime fuses with the DequantizeLinear weights into
                              integer kernels (QLinearConv, MatMulIntegerToFloat / QLinearMatMul)
  INT, dynamic per token    → ReduceMax/ReduceMin scale (and zero point), Round, Clip, in float ops
  FP E5M10 (the A16 grid)   → x/s onto the grid by a Cast round trip through float16, the same RNE rounding
                              with subnormals: two vectorised Casts instead of ~12 ops (`carrier`)
  FP ExMy (any other E/M)   → x/s onto the grid: saturate, then Veltkamp's split (rounds to m+1 significant
                              bits, ties to even) for normal binades and a fixed-step magic-number rounding
                              below 2^emin, joined without Where (`_Emitter.split_round`) —
                              exact for every ExMy, including those ONNX has no dtype for (E2M3, E3M2, E3M4)
  MX blocks                 → blocks along the axis, shared power-of-two scale 2^(⌊log2 amax⌋ − emax),
                              elements rounded as above

With `as_function` (what the quantised exporter sets) every quantiser but the 8-bit (or clipped) static
INT QDQ pair is written once per kind as a model-local function (runtimes.onnx.functions) and called at
each site with its static scale/zero point as inputs; the 8-bit QDQ pairs stay inline, where
onnxruntime's QDQ fusion looks for them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from runtimes.onnx.functions import DOMAIN, Body
from runtimes.onnx.quantspec import ActQuant


# ONNX float types whose onnxruntime CPU Cast rounds to nearest-even, as quant formats: (format, TensorProto type).
# Only float16: the float8 types would carry E2M3/E3M2 (shifted by 2^-6 / 2^-12) and round exactly too, but
# onnxruntime 1.32 casts to and from float8 element by element (~11 ns/value on vit-small's W4A6, slower than
# the op chain below); float4 has no CPU Cast. `carrier` takes any type added here, with its shift.
_CARRIERS = (("e5m10", 10),)


def carrier(fmt) -> tuple[int, int] | None:
    """(ONNX data type, k) such that fmt.round(y) == Cast(Cast(y·2^k → type) → float)·2^−k for |y| ≤ fmt.max,
    or None when no type fits.

    A carrier must have the format's mantissa bits and reach its top binade once the value is shifted by
    2^k, k = carrier.emin − fmt.emin: then every binade (and the subnormal step 2^(emin−m)) coincides, so
    one RNE rounding in the carrier is quant's rounding (quant.formats.FpFormat.round); the shift is a
    power of two, exact in float32 for every value that does not round to zero anyway. Checked on every
    grid point, midpoint and its neighbours by tests/test_runtime_onnx.py.
    """
    import quant
    if not isinstance(fmt, quant.FpFormat):
        return None
    for name, dtype in _CARRIERS:
        c = quant.parse_format(name)
        k = c.emin - fmt.emin
        if c.man_bits == fmt.man_bits and fmt.emax + k <= c.emax and fmt.max * 2.0 ** k <= c.max:
            return dtype, k
    return None


def reference_quantizer(aq: ActQuant) -> nn.Module:
    """quant.ActQuantizer configured (and calibrated) as `aq` describes: the torch-side rounding."""
    import quant
    gran = {"per-tensor": "tensor", "per-token": "token", "block": "block"}[aq.granularity]
    q = quant.ActQuantizer(quant.QConfig(aq.fmt, gran), axis=aq.axis)
    if aq.granularity == "per-tensor":
        q.scale.fill_(aq.scale)
        if q.zero_point is not None:
            q.zero_point.fill_(aq.zero_point or 0)
    return q.eval()


_LIVE: dict[int, "ActQuantOp"] = {}   # id → op, while an export traces it (the tracer takes plain args only)


class _Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, key: int):  # noqa: ARG004
        # The symbolic stands for this node, so its inside need not (and, with dtype views, cannot) be
        # traced. ref.forward, not ref(x): module calls inside a traced Function break the tracer's scopes.
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return _LIVE[key].ref.forward(x)
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def symbolic(g, x, key: int):
        op = _LIVE[key]
        shape = _static_shape(x)
        if not op.as_function or _inline(op.aq):
            return _Emitter(g).quantize(x, op.aq, shape)
        name = _register(op.aq, shape)
        extra = [g.op("Constant", value_t=torch.from_numpy(np.asarray(v))) for v in _static_inputs(op.aq)]
        y = g.op(f"{DOMAIN}::{name}", x, *extra)
        y.setType(x.type())
        return y


def _static_shape(x) -> tuple[int | None, list | None]:
    """(rank, sizes) of a traced value, as far as the exporter knows them."""
    t = x.type()
    rank = t.dim() if hasattr(t, "dim") else None
    return rank, (t.varyingSizes() if hasattr(t, "varyingSizes") else None)


def _int_storage(fmt) -> tuple[type, int]:
    """(storage dtype, zero-point shift) of a static INT grid's QDQ pair: 8-bit, or 16-bit for wider grids
    (opset 21). The exporter has no uint16, so an unsigned 16-bit grid is stored as int16 with its zero
    point shifted by 2^15: round(x/s) + zp − 2^15, clamped, minus the same zero point gives the same values."""
    wide = fmt.qmax - fmt.qmin > 255
    return ((np.int16 if wide else np.int8) if fmt.signed or wide else np.uint8), (2 ** 15 if wide and not fmt.signed else 0)


def _inline(aq: ActQuant) -> bool:
    """Static INT QDQ pairs stay inline when 8-bit (what ORT fuses into integer kernels) or clipped to a
    narrower grid (bounds baked as constants); 16-bit full-range ones become function calls too."""
    import quant
    if aq.granularity != "per-tensor" or not isinstance(aq.format, quant.IntFormat):
        return False
    store, shift = _int_storage(aq.format)
    full = (aq.format.qmin, aq.format.qmax) == (np.iinfo(store).min + shift, np.iinfo(store).max + shift)
    return store in (np.int8, np.uint8) or not full


def _static_inputs(aq: ActQuant) -> list:
    """Per-site values a function call passes: the static scale (and an INT grid's stored zero point)."""
    import quant
    if aq.granularity != "per-tensor":
        return []
    if not isinstance(aq.format, quant.IntFormat):
        return [np.float32(aq.scale)]
    store, shift = _int_storage(aq.format)
    return [np.float32(aq.scale), np.asarray((aq.zero_point or 0) - shift, store)]


_DEFS: dict[str, tuple[ActQuant, tuple]] = {}   # function name → (quantiser, static shape info it needs)


def _register(aq: ActQuant, shape: tuple) -> str:
    """The function name for this quantiser kind (its definition is built by `function_protos`)."""
    import quant
    gran = {"per-tensor": "tensor", "per-token": "token"}.get(aq.granularity, aq.granularity)
    name = f"aq_{aq.fmt}_{gran}" + (f"_ax{aq.axis}".replace("-", "m") if aq.dynamic else "")   # static: no axis
    key_shape = (None, None)
    if isinstance(aq.format, quant.MxFormat):   # the block reshape needs rank and feature size
        rank, sizes = shape
        n = sizes[aq.axis] if rank is not None and sizes is not None else None
        key_shape = (rank, None if n is None else [n if i == aq.axis % rank else None for i in range(rank)])
        name += f"_r{rank}n{n}"
    _DEFS[name] = (aq, key_shape)
    return name


def function_protos(names, opset: int) -> dict:
    """FunctionProtos of the named quantiser kinds (registered while an export traced them)."""
    out = {}
    for name in names:
        if name not in _DEFS:
            continue
        aq, shape = _DEFS[name]
        inputs = ["x", "s", "zp"][:1 + len(_static_inputs(aq))]
        body = Body(inputs)
        y = _Emitter(body).quantize("x", aq, shape, *inputs[1:])
        out[name] = body.function(name, y, opset)
    return out


class ActQuantOp(nn.Module):
    """Drop-in for a quant.ActQuantizer: same values in torch, explicit rounding ops in ONNX."""

    def __init__(self, aq: ActQuant, as_function: bool = False):
        super().__init__()
        self.aq = aq
        self.as_function = as_function
        # kept out of the module tree: its buffers must not become graph parameters of the twin
        self.__dict__["ref"] = reference_quantizer(aq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            _LIVE[id(self)] = self
            return _Fn.apply(x, id(self))
        return self.ref(x)

    def extra_repr(self) -> str:
        return f"{self.aq.fmt}, {self.aq.granularity}"


class _Emitter:
    """ONNX nodes for one quantiser, written through the TorchScript exporter's graph context or into
    a function Body (both take `op(name, *inputs, **suffixed_attrs)`)."""

    def __init__(self, g):
        self.g = g

    def c(self, value, dtype=np.float32):
        return self.g.op("Constant", value_t=torch.from_numpy(np.asarray(value, dtype)))

    def op(self, name, *inputs, **attrs):
        return self.g.op(name, *inputs, **attrs)

    def reduce(self, name, x, axis, keep=1):
        return self.op(name, x, self.c([axis], np.int64), keepdims_i=keep)

    # -- dispatch ------------------------------------------------------------------------------
    def quantize(self, x, aq: ActQuant, shape: tuple = (None, None), scale_input=None, zp_input=None):
        import quant
        fmt = aq.format
        if isinstance(fmt, quant.MxFormat):
            return self.mx(x, fmt, aq.axis, shape)
        if aq.granularity == "per-tensor":
            s = scale_input if scale_input is not None else self.c(np.float32(aq.scale))
            if isinstance(fmt, quant.IntFormat):
                return self.int_static(x, fmt, np.float32(aq.scale), aq.zero_point or 0, scale_input, zp_input)
            return self.op("Mul", self.fp_round(self.op("Div", x, s), fmt), s)
        if isinstance(fmt, quant.IntFormat):
            return self.int_per_token(x, fmt, aq.axis)
        amax = self.reduce("ReduceMax", self.op("Abs", x), aq.axis)
        k = carrier(fmt)[1] if carrier(fmt) else 0
        # s·2^−k directly (power-of-two factors are exact), so x/s lands on the carrier's binades: x/s ≤ max
        # up to one float32 ulp, which the carrier rounds down to max — no Clip needed
        s = self.op("Max", self.op("Div", amax, self.c(fmt.max * 2.0 ** k)), self.c(np.float32(1e-12) * np.float32(2.0 ** -k)))
        return self.op("Mul", self.fp_round(self.op("Div", x, s), fmt, bounded=True, shifted=True), s)

    # -- INT -----------------------------------------------------------------------------------
    def int_static(self, x, fmt, s: np.float32, zp: int, s_in=None, zp_in=None):
        """QDQ pair in the grid's storage (runtimes.onnx.actquant._int_storage); narrower grids (and int8's
        symmetric −127) clip the float input first. In a function body scale and zero point are inputs."""
        store, shift = _int_storage(fmt)
        if (fmt.qmin, fmt.qmax) != (int(np.iinfo(store).min) + shift, int(np.iinfo(store).max) + shift):
            lo = np.float32((fmt.qmin - zp) * np.float64(s))
            hi = np.float32((fmt.qmax - zp) * np.float64(s))
            x = self.op("Clip", x, self.c(lo), self.c(hi))
        sc = s_in if s_in is not None else self.c(s)
        zpc = zp_in if zp_in is not None else self.c(zp - shift, store)
        q = self.op("QuantizeLinear", x, sc, zpc)
        return self.op("DequantizeLinear", q, sc, zpc)

    def int_per_token(self, x, fmt, axis: int):
        if fmt.signed:
            amax = self.reduce("ReduceMax", self.op("Abs", x), axis)
            s = self.op("Max", self.op("Div", amax, self.c(float(fmt.qmax))), self.c(1e-12))
            q = self.op("Clip", self.op("Round", self.op("Div", x, s)), self.c(float(fmt.qmin)), self.c(float(fmt.qmax)))
            return self.op("Mul", q, s)
        lo = self.op("Min", self.reduce("ReduceMin", x, axis), self.c(0.0))
        hi = self.op("Max", self.reduce("ReduceMax", x, axis), self.c(0.0))
        s = self.op("Max", self.op("Div", self.op("Sub", hi, lo), self.c(float(fmt.qmax - fmt.qmin))), self.c(1e-12))
        zp = self.op("Add", self.op("Round", self.op("Div", self.op("Neg", lo), s)), self.c(float(fmt.qmin)))
        q = self.op("Clip", self.op("Round", self.op("Add", self.op("Div", x, s), zp)),
                    self.c(float(fmt.qmin)), self.c(float(fmt.qmax)))
        return self.op("Mul", self.op("Sub", q, zp), s)

    # -- FP grids ------------------------------------------------------------------------------
    def binade(self, a, lo: int, hi: int):
        """int64 index k with 2^(lo+k) ≤ a < 2^(lo+k+1), k clamped to [0, hi−lo]: exact.

        ⌊log2 a⌋ from float32 Log may be one off next to a power of two; one comparison each way against the
        power it names (a table Gather, exact) corrects it. All on the small per-block tensor: the former
        253-way compare against every power broadcast a (…, 253) tensor and was most of MXFP4 W4A8's time."""
        if hi <= lo:
            return None
        from onnx import TensorProto as T
        top = self.c(np.int64(hi - lo), np.int64)
        zero = self.c(np.int64(0), np.int64)
        guess = self.op("Floor", self.op("Mul", self.op("Log", a), self.c(1 / np.log(2.0))))
        k0 = self.op("Cast", self.op("Clip", self.op("Sub", guess, self.c(float(lo))), self.c(0.0), self.c(float(hi - lo))),
                     to_i=T.INT64)
        p = self.op("Gather", self.c(np.ldexp(np.float32(1), np.arange(lo, hi + 1)).astype(np.float32)), k0, axis_i=0)
        up = self.op("Cast", self.op("GreaterOrEqual", a, self.op("Mul", p, self.c(2.0))), to_i=T.INT64)
        down = self.op("Cast", self.op("Less", a, p), to_i=T.INT64)
        return self.op("Clip", self.op("Sub", self.op("Add", k0, up), down), zero, top)

    def fp_round(self, y, fmt, bounded: bool = False, shifted: bool = False):
        """y (grid units) → nearest grid value of `fmt`, ties to even, saturating at ±max.

        With a carrier type (see `carrier`): Clip (unless `bounded`: |y| exceeds max by at most an ulp), then
        the Cast round trip; `shifted`: y is already scaled by 2^k and the result stays so."""
        from onnx import TensorProto as T
        car = carrier(fmt)
        if car is not None:
            dtype, k = car
            if k and not shifted:
                y = self.op("Mul", y, self.c(2.0 ** k))
            if not bounded:
                m = fmt.max * 2.0 ** (k if k else 0)
                y = self.op("Clip", y, self.c(-m), self.c(m))
            r = self.op("Cast", self.op("Cast", y, to_i=dtype), to_i=T.FLOAT)
            return self.op("Mul", r, self.c(2.0 ** -k)) if k and not shifted else r
        if not bounded:
            y = self.op("Clip", y, self.c(-fmt.max), self.c(fmt.max))
        return self.split_round(y, fmt)

    def split_round(self, y, fmt):
        """RNE of y (|y| ≤ max) onto `fmt`'s grid in 9 plain float32 ops: vectorised, no table, no Where.

        hi: Veltkamp's split, g = y·(2^(23−m)+1), hi = g + (y − g), is y rounded to m+1 significant bits, ties to
        even (checked on every float32 in [1, 2) and scaled binades for m = 1..4): the answer where |y| ≥ t = 2^emin.
        lo: the fixed-step grid below t, (c + M) − M with c = Clip(y, ±t) and M = 1.5·2^(23+emin−m) (RNE at step
        2^(emin−m)): the answer where |y| < t, and ±t elsewhere. hc = Clip(hi, ±t) equals lo where |y| ≥ t and hi
        where |y| < t, so hi + (lo − hc) is hi or lo, exactly (lo − hi has at most 2m+2 significant bits).
        (onnxruntime's Where ran ~20× slower per element than these ops: 60 % of deit_tiny's W4A6 time.)
        """
        m, t = fmt.man_bits, 2.0 ** fmt.emin
        g = self.op("Mul", y, self.c(2.0 ** (23 - m) + 1))
        hi = self.op("Add", g, self.op("Sub", y, g))
        magic = self.c(1.5 * 2.0 ** (23 + fmt.emin - m))
        lo = self.op("Sub", self.op("Add", self.op("Clip", y, self.c(-t), self.c(t)), magic), magic)
        return self.op("Add", hi, self.op("Sub", lo, self.op("Clip", hi, self.c(-t), self.c(t))))

    def round_above_step(self, y, fmt):
        """z (|y| ≤ max) whose RNE at the fixed step 2^(emin−m) is `fmt`'s rounding of y: what a QuantizeLinear at
        that step (the integer form's ×8 for E2M3) finishes in its own rounding, in 7 ops instead of 9 + the cast.

        hi (Veltkamp, as in `split_round`) is the answer where |y| ≥ t = 2^emin, already on the step grid; below t
        the answer is y itself, left for the QuantizeLinear. hi + (Clip(y, ±t) − Clip(hi, ±t)) is hi where |y| ≥ t
        (both clips give ±t) and hi + (y − hi) = y exactly where |y| < t (|hi| ≤ t there; y − hi is exact)."""
        m, t = fmt.man_bits, 2.0 ** fmt.emin
        g = self.op("Mul", y, self.c(2.0 ** (23 - m) + 1))
        hi = self.op("Add", g, self.op("Sub", y, g))
        lo, hic = (self.op("Clip", v, self.c(-t), self.c(t)) for v in (y, hi))
        return self.op("Add", hi, self.op("Sub", lo, hic))

    def element_round(self, y, el):
        import quant
        if isinstance(el, quant.IntFormat):
            return self.op("Clip", self.op("Round", y), self.c(float(el.qmin)), self.c(float(el.qmax)))
        return self.fp_round(y, el)

    def mx(self, x, fmt, axis: int, shape: tuple):
        """MX along `axis`: needs the axis length to be a multiple of the block (else a clear error). Where the
        tracer lost the length (timm's LayerNorm outputs) the blocks are reshaped as (…, −1, block): a length
        that is not a multiple fails the export's parity run instead."""
        from runtimes.errors import ExportError
        rank, sizes = shape
        if rank is None:
            raise ExportError("MX activation quantisation needs the activation's rank at export")
        n, b = (sizes[axis] if sizes is not None else None), fmt.block
        if n is not None and n % b:
            raise ExportError(f"MX activations in blocks of {b} need the feature axis ({n}) to be a multiple of "
                              f"{b}; use a block size dividing {n} (e.g. mxfp8b{np.gcd(n, b)})")
        perm = None
        if axis not in (-1, rank - 1):
            perm = [i for i in range(rank) if i != axis % rank] + [axis % rank]
            x = self.op("Transpose", x, perm_i=perm)
        shape = self.op("Shape", x)
        lead = self.op("Slice", shape, self.c([0], np.int64), self.c([rank - 1], np.int64))
        gshape = self.op("Concat", lead, self.c([-1 if n is None else n // b, b], np.int64), axis_i=0)
        blocks = self.op("Reshape", x, gshape)
        amax = self.op("Max", self.reduce("ReduceMax", self.op("Abs", blocks), -1), self.c(2.0 ** -126))
        e = self.binade(self.op("Squeeze", amax, self.c([-1], np.int64)), -126, 127)   # ⌊log2 amax⌋ + 126
        table = np.ldexp(np.float64(1), np.clip(np.arange(-126, 128) - fmt.emax_elem, -127, 127)).astype(np.float32)
        scale = self.op("Unsqueeze", self.op("Gather", self.c(table), e, axis_i=0), self.c([-1], np.int64))
        y = self.op("Mul", self.element_round(self.op("Div", blocks, scale), fmt.element), scale)
        y = self.op("Reshape", y, shape)
        if perm is not None:
            y = self.op("Transpose", y, perm_i=list(np.argsort(perm)))
        return y
