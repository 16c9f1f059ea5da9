"""What the ONNX exporter needs to know about a quantised model, independent of how quant/ stores it.

A layer's weight is `W = (q - zero_point) * scale` with `q` on the format's grid (integers for INT,
unscaled grid values for FP), viewed as (out, fan_in) and `scale` of shape (out or 1, groups): one
column is per-channel, G columns are per-group along fan_in (group size fan_in / G, or the given
group size when fan_in is not a multiple of it: quant/ then pads the last group, which is shorter).

Every activation quantiser of the model (layer inputs, q/k/v of the attention matmuls, the softmax
output, LayerNorm/GELU inputs) is an `ActQuant` keyed by its qualified module name; the exporter
writes exactly that rounding into the graph at the quantiser's place (runtimes.onnx.actquant).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtimes.errors import ExportError

_ALIASES = {"fp4": "fp4_e2m1", "fp6": "fp6_e2m3", "fp8": "fp8_e4m3", "e4m3": "fp8_e4m3", "e4m3fn": "fp8_e4m3",
            "e5m2": "fp8_e5m2", "e2m1": "fp4_e2m1", "e2m3": "fp6_e2m3", "e3m2": "fp6_e3m2"}
_FP_DTYPES = {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2", "fp6_e2m3": "float6_e2m3fn",
              "fp6_e3m2": "float6_e3m2fn", "fp4_e2m1": "float4_e2m1fn"}
# weight-format names above → quant's format names (activations are described in quant's names)
_QUANT_NAMES = {"fp8_e4m3": "e4m3fn", "fp8_e5m2": "e5m2", "fp6_e2m3": "e2m3", "fp6_e3m2": "e3m2", "fp4_e2m1": "e2m1"}
_ACT_GRANULARITY = {"tensor": "per-tensor", "token": "per-token", "block": "block",
                    "per-tensor": "per-tensor", "per-token": "per-token"}


def canonical_format(fmt: str) -> str:
    """A weight format name the exporter has an encoding for (int2..int8, fp4/fp6/fp8 variants)."""
    fmt = _ALIASES.get(fmt.lower(), fmt.lower())
    if fmt in _FP_DTYPES or (fmt.startswith("int") and fmt[3:].isdigit() and 2 <= int(fmt[3:]) <= 8):
        return fmt
    raise ExportError(f"weight format {fmt!r} has no ONNX encoding here; use int2..int8, fp4_e2m1, fp6_e2m3, "
                      "fp6_e3m2, fp8_e4m3 or fp8_e5m2 (or give the layer an explicit grid)")


def format_bits(fmt: str) -> int:
    return int(fmt[3:]) if fmt.startswith("int") else int(fmt[2])


def fp_grid_codes(fmt: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, lut): the bit pattern of each grid value in `fmt` and the code → value table (ml_dtypes)."""
    import ml_dtypes
    dt = getattr(ml_dtypes, _FP_DTYPES[fmt])
    bits = format_bits(fmt)
    lut = np.arange(2 ** bits, dtype=np.uint8).view(dt).astype(np.float32)
    codes = values.astype(np.float32).astype(dt).view(np.uint8)
    if not np.array_equal(lut[codes], values.astype(np.float32)):
        bad = values.ravel()[np.flatnonzero(lut[codes].ravel() != values.ravel())[0]]
        raise ExportError(f"weight value {bad} is not on the {fmt} grid; pass the unscaled grid values as q")
    return codes, lut


@dataclass
class ActQuant:
    """One activation quantiser, in quant/'s terms (formats by quant.parse_format name).

    per-tensor: static `scale` (and `zero_point` for unsigned INT) fixed by calibration;
    per-token: dynamic, one scale (and zero point for unsigned INT) per slice along `axis`;
    block: MX, a power-of-two scale per `block` elements along `axis`.
    """
    fmt: str = "int8"
    granularity: str = "per-token"
    scale: float | None = None
    zero_point: int | None = None
    axis: int = -1
    block: int | None = None

    def __post_init__(self):
        import quant
        self.fmt = _QUANT_NAMES.get(_ALIASES.get(self.fmt.lower(), self.fmt.lower()), self.fmt.lower())
        try:
            f = quant.parse_format(self.fmt)
        except quant.SpecError as e:
            raise ExportError(f"activation format: {e}") from e
        self.granularity = _ACT_GRANULARITY.get(self.granularity, self.granularity)
        if self.granularity not in ("per-tensor", "per-token", "block"):
            raise ExportError(f"activation granularity {self.granularity!r}: use per-tensor, per-token or block")
        if (self.granularity == "block") != isinstance(f, quant.MxFormat):
            raise ExportError(f"activation format {self.fmt} needs granularity "
                              f"{'block' if isinstance(f, quant.MxFormat) else 'per-tensor or per-token'}")
        if self.granularity == "per-tensor" and self.scale is None:
            raise ExportError("a static (per-tensor) activation quantiser needs its calibrated scale")
        if isinstance(f, quant.MxFormat):
            self.block = f.block

    @property
    def format(self):
        import quant
        return quant.parse_format(self.fmt)

    @property
    def dynamic(self) -> bool:
        return self.granularity != "per-tensor"

    @property
    def bits(self) -> int:
        return self.format.code_bits

    @classmethod
    def from_quantizer(cls, aq) -> "ActQuant":
        """From a quant.ActQuantizer (reads its describe())."""
        d = aq.describe()
        return cls(d["format"], d["granularity"], d.get("scale"), d.get("zero_point"), d.get("axis", -1))

    def to_dict(self) -> dict:
        d = {"fmt": self.fmt, "granularity": self.granularity, "dynamic": self.dynamic, "axis": self.axis}
        if self.scale is not None:
            d["scale"] = float(self.scale)
        if self.zero_point is not None:
            d["zero_point"] = int(self.zero_point)
        if self.block:
            d["block"] = int(self.block)
        return d


@dataclass
class LayerQuant:
    """One quantised Linear/Conv2d: grid values `q` (weight shape), `scale` (out|1, groups), optional zero point.

    `scale_dtype` "float16" means every scale is exactly an fp16 value (quant stores them so) and may
    be written at half the bytes. `group` is the group size; it is needed only when fan_in is not a
    multiple of it (ragged last group, e.g. fan_in 247 in groups of 128 → 2 groups, the last of 119).
    """
    fmt: str
    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None = None
    scale_dtype: str = "float32"
    group: int | None = None

    def __post_init__(self):
        self.fmt = canonical_format(self.fmt)
        self.q = np.asarray(self.q, np.float32)
        out = self.q.shape[0]
        fan_in = int(np.prod(self.q.shape[1:]))
        s = np.asarray(self.scale, np.float32)
        s = s.reshape(1, 1) if s.size == 1 else s.reshape(s.shape[0], -1) if s.ndim != 1 else s.reshape(-1, 1)
        groups = s.shape[1]
        if groups == 1:   # per-channel / per-tensor (quant's per-tensor group spans all rows)
            self.group = fan_in
        elif self.group is None and fan_in % groups == 0:
            self.group = fan_in // groups
        if s.shape[0] not in (1, out) or self.group is None or -(-fan_in // self.group) != groups:
            raise ExportError(f"scale of shape {tuple(np.shape(self.scale))} does not tile a weight of shape "
                              f"{self.q.shape}" + (f" in groups of {self.group}" if self.group else "")
                              + "; give (out,), (out, groups) or a scalar (and the group size if the last group is short)")
        self.group = int(self.group)
        self.scale = np.broadcast_to(s, (out, s.shape[1])).copy()
        if self.scale_dtype == "float16" and not np.array_equal(self.scale.astype(np.float16).astype(np.float32),
                                                               self.scale):
            self.scale_dtype = "float32"
        if self.zero_point is not None:
            self.zero_point = np.broadcast_to(np.asarray(self.zero_point, np.float32).reshape(-1, 1)
                                              if np.ndim(self.zero_point) <= 1 else self.zero_point,
                                              self.scale.shape).copy()
            if self.fmt.startswith("fp"):
                raise ExportError("FP weight formats take no zero point")
        if self.fmt.startswith("int"):
            b = format_bits(self.fmt)
            lo, hi = (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if self.zero_point is None else (0, 2 ** b - 1)
            if not np.array_equal(self.q, np.round(self.q)) or self.q.min() < lo or self.q.max() > hi:
                raise ExportError(f"{self.fmt} codes must be integers in [{lo}, {hi}] "
                                  f"(got [{self.q.min()}, {self.q.max()}])")

    @property
    def group_size(self) -> int:
        return self.group

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.q.shape[1:]))

    @property
    def pad(self) -> int:
        """Zeros that complete a ragged last group (0 when fan_in is a multiple of the group size)."""
        return self.scale.shape[1] * self.group - self.fan_in

    @property
    def granularity(self) -> str:
        return "per-channel" if self.scale.shape[1] == 1 else f"per-group-{self.group_size}"

    def grouped(self, a: np.ndarray) -> np.ndarray:
        """(out, fan_in…) → (out, groups, group_size), zero-padding a ragged last group as quant/ does."""
        a = a.reshape(a.shape[0], -1)
        return np.pad(a, ((0, 0), (0, self.pad))).reshape(a.shape[0], self.scale.shape[1], self.group)

    def dequantized(self) -> np.ndarray:
        """The float weight the fake-quant model computes with."""
        zp = 0.0 if self.zero_point is None else self.zero_point[..., None]
        w = ((self.grouped(self.q) - zp) * self.scale[..., None]).reshape(self.q.shape[0], -1)
        return w[:, :self.fan_in].reshape(self.q.shape).astype(np.float32)


@dataclass
class QuantSpec:
    """Quantised weights keyed by layer name, activation quantisers keyed by quantiser name, precision label."""
    precision: str
    layers: dict[str, LayerQuant] = field(default_factory=dict)
    acts: dict[str, ActQuant] = field(default_factory=dict)


def spec_from_model(model) -> QuantSpec:
    """Collect `export_descriptor()` of quant/'s layers and every quant.ActQuantizer of `model`."""
    import quant
    layers, acts = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, quant.ActQuantizer):
            acts[name] = ActQuant.from_quantizer(m)
        describe = getattr(m, "export_descriptor", None)
        if describe is None:
            continue
        d = describe()
        if d.get("fmt") is None:
            continue   # activation-only layer: its input quantiser is collected above
        if d["fmt"].startswith(("mx", "uint")):
            raise ExportError(f"layer {name}: {d['fmt']} weights have no ONNX encoding here; "
                              "use int2..int8 or fp4/fp6/fp8 weights")
        wq = getattr(m, "weight_quant", None)
        sdtype = getattr(wq, "scale_dtype", "float32")
        layers[name] = LayerQuant(d["fmt"], _np(d["q"]), _np(d["scale"]), _np(d.get("zero_point")), sdtype,
                                  getattr(wq, "group_size", None))
    if not layers and not acts:
        raise ExportError("the model has no quantised layers; quantise it with `edgevit quantize` first")
    qs = getattr(model, "quant_spec", None)
    precision = getattr(qs, "bits", None) or _guess_precision(layers, acts)
    return QuantSpec(precision, layers, acts)


def _guess_precision(layers: dict[str, LayerQuant], acts: dict[str, ActQuant]) -> str:
    wb = max((format_bits(l.fmt) for l in layers.values()), default=32)
    ab = max((a.bits for a in acts.values()), default=32)
    return f"w{wb}a{ab}"


def _np(x):
    if x is None:
        return None
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
