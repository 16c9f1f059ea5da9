"""What the ONNX exporter needs to know about a quantised layer, independent of how quant/ stores it.

A layer's weight is `W = (q - zero_point) * scale` with `q` on the format's grid (integers for INT,
unscaled grid values for FP), viewed as (out, fan_in) and `scale` of shape (out or 1, groups): one
column is per-channel, G columns are per-group along fan_in (group size fan_in / G). Activations are
described by `ActQuant`; the exporter reproduces exactly that rounding in the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtimes.errors import ExportError

_ALIASES = {"fp4": "fp4_e2m1", "fp6": "fp6_e2m3", "fp8": "fp8_e4m3", "e4m3": "fp8_e4m3", "e5m2": "fp8_e5m2",
            "e2m1": "fp4_e2m1", "e2m3": "fp6_e2m3", "e3m2": "fp6_e3m2"}
_FP_DTYPES = {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2", "fp6_e2m3": "float6_e2m3fn",
              "fp6_e3m2": "float6_e3m2fn", "fp4_e2m1": "float4_e2m1fn"}


def canonical_format(fmt: str) -> str:
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
    """Activation quantisation at a layer's input.

    INT: symmetric, qmax = 2^(bits-1) - 1, q = clip(round(x / s), -qmax, qmax) (round half to even),
    s = max(amax, 1e-8) / qmax with amax = max|x| per token (last dim; channels for NCHW convs) when
    `dynamic`, else the fixed `scale`. FP: x / s cast to the FP format (round to nearest even,
    saturating), s = amax / max finite value of the format.
    """
    fmt: str = "int8"
    granularity: str = "per-token"     # per-token | per-tensor
    dynamic: bool = True
    scale: float | None = None         # static scale (dynamic=False)

    def __post_init__(self):
        self.fmt = canonical_format(self.fmt)
        if self.granularity not in ("per-token", "per-tensor"):
            raise ExportError(f"activation granularity {self.granularity!r}: use per-token or per-tensor")
        if not self.dynamic and self.scale is None:
            raise ExportError("a static activation quantiser needs its calibrated scale")

    @property
    def bits(self) -> int:
        return format_bits(self.fmt)

    def to_dict(self) -> dict:
        return {"fmt": self.fmt, "granularity": self.granularity, "dynamic": self.dynamic,
                **({"scale": float(self.scale)} if self.scale is not None else {})}


@dataclass
class LayerQuant:
    """One quantised Linear/Conv2d: grid values `q` (weight shape), `scale` (out|1, groups), optional zero point."""
    fmt: str
    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None = None
    act: ActQuant | None = None

    def __post_init__(self):
        self.fmt = canonical_format(self.fmt)
        self.q = np.asarray(self.q, np.float32)
        out = self.q.shape[0]
        fan_in = int(np.prod(self.q.shape[1:]))
        s = np.asarray(self.scale, np.float32)
        s = s.reshape(1, 1) if s.size == 1 else s.reshape(s.shape[0], -1) if s.ndim != 1 else s.reshape(-1, 1)
        if s.shape[0] not in (1, out) or fan_in % s.shape[1]:
            raise ExportError(f"scale of shape {tuple(np.shape(self.scale))} does not tile a weight of shape "
                              f"{self.q.shape}; give (out,), (out, groups) or a scalar")
        self.scale = np.broadcast_to(s, (out, s.shape[1])).copy()
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
        return int(np.prod(self.q.shape[1:])) // self.scale.shape[1]

    @property
    def granularity(self) -> str:
        return "per-channel" if self.scale.shape[1] == 1 else f"per-group-{self.group_size}"

    def dequantized(self) -> np.ndarray:
        """The float weight the fake-quant model computes with."""
        out = self.q.shape[0]
        q = self.q.reshape(out, self.scale.shape[1], self.group_size)
        zp = 0.0 if self.zero_point is None else self.zero_point[..., None]
        return ((q - zp) * self.scale[..., None]).reshape(self.q.shape).astype(np.float32)


@dataclass
class QuantSpec:
    """All quantised layers of a model, keyed by qualified module name, plus the precision label (w4a8, ...)."""
    precision: str
    layers: dict[str, LayerQuant] = field(default_factory=dict)
    graph_form: str = "auto"    # auto | integer | qdq: how INT8 weight×activation products are expressed


def spec_from_model(model) -> QuantSpec:
    """Collect `export_descriptor()` from quant/'s modules (see module docstring for the fields)."""
    layers, precision = {}, None
    for name, m in model.named_modules():
        describe = getattr(m, "export_descriptor", None)
        if describe is None:
            continue
        d = describe()
        act = d.get("act")
        layers[name] = LayerQuant(d["fmt"], _np(d["q"]), _np(d["scale"]), _np(d.get("zero_point")),
                                  ActQuant(**act) if isinstance(act, dict) else act)
        precision = precision or d.get("precision")
    if not layers:
        raise ExportError("the model has no quantised layers exposing export_descriptor(); "
                          "quantise it with `edgevit quantize` first")
    precision = getattr(model, "precision", None) or precision or _guess_precision(layers)
    return QuantSpec(precision, layers)


def _guess_precision(layers: dict[str, LayerQuant]) -> str:
    wb = max(format_bits(l.fmt) for l in layers.values())
    acts = [l.act.bits for l in layers.values() if l.act is not None]
    return f"w{wb}a{max(acts)}" if acts else f"w{wb}a32"


def _np(x):
    if x is None:
        return None
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
