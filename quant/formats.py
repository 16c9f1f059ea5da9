"""Number formats: integers, generic ExMy floating point, and OCP MX block formats.

Every format works in its own *grid units* (the value after dividing by the scale): `round` maps
reals to the nearest representable value (round-to-nearest-even, saturating at ±max), `floor`
and `step` give the grid point below and the local spacing (what AdaRound-style methods need),
`encode`/`decode` convert grid values to the bit patterns that get packed into checkpoints.
FP grids are derived from E/M/bias alone, so any ExMy works; the named ones match ml_dtypes bit
for bit (tests/test_quant_formats.py).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from quant.errors import SpecError


@dataclass(frozen=True)
class IntFormat:
    """`bits`-bit integer grid. Signed formats use the narrow symmetric range ±(2^(b-1)−1) so the
    zero-point-free weight grid is symmetric (what ONNX/QNN int weights expect); unsigned formats
    span 0..2^b−1 and are used with a zero point for activations."""
    bits: int
    signed: bool = True

    def __post_init__(self):
        if not (2 <= self.bits <= 8 or self.bits == 16):
            raise SpecError(f"integer formats have 2-8 or 16 bits, not {self.bits}")

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.bits}"

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    @property
    def max(self) -> float:
        return float(self.qmax)

    @property
    def code_bits(self) -> int:
        return self.bits

    def round(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x).clamp_(self.qmin, self.qmax)

    def floor(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x).clamp_(self.qmin, self.qmax)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)

    def encode(self, q: torch.Tensor) -> torch.Tensor:
        """Two's-complement bit patterns in the low `bits` bits (int32)."""
        return q.to(torch.int32) & (2 ** self.bits - 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        c = codes.to(torch.int32) & (2 ** self.bits - 1)
        if self.signed:
            c = torch.where(c >= 2 ** (self.bits - 1), c - 2 ** self.bits, c)
        return c.float()

    def grid(self) -> torch.Tensor:
        return torch.arange(self.qmin, self.qmax + 1, dtype=torch.float32)


# How the top exponent is used: "ieee" reserves it for inf/NaN; "fn" keeps it finite except the
# all-ones mantissa (NaN), as E4M3FN; "finite" has no specials (OCP FP4/FP6); "fnuz" has no
# negative zero and bias 2^(e-1) (NaN is the -0 code).
SPECIALS = ("ieee", "fn", "finite", "fnuz")


@dataclass(frozen=True)
class FpFormat:
    """Sign + `exp_bits` exponent + `man_bits` mantissa with subnormals; grid derived from E/M/bias."""
    exp_bits: int
    man_bits: int
    special: str = "finite"
    bias: int | None = None

    def __post_init__(self):
        if self.special not in SPECIALS:
            raise SpecError(f"unknown FP special-value convention {self.special!r}; use one of {SPECIALS}")
        if not (1 <= self.exp_bits <= 8 and 0 <= self.man_bits <= 10 and self.exp_bits + self.man_bits <= 15):
            raise SpecError(f"E{self.exp_bits}M{self.man_bits} is outside 1-8 exponent and 0-10 mantissa bits")
        if self.special == "fn" and self.man_bits == 0:
            raise SpecError("an 'fn' format needs mantissa bits (its NaN is the all-ones mantissa)")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - (0 if self.special == "fnuz" else 1))

    @property
    def name(self) -> str:
        base = f"e{self.exp_bits}m{self.man_bits}"
        suffix = "" if self.special == _default_special(self.exp_bits, self.man_bits) else self.special
        return base + suffix + ("" if self.bias == FpFormat(self.exp_bits, self.man_bits, self.special).bias
                                else f"b{self.bias}")

    @property
    def code_bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal; subnormals share its step 2^(emin−m)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        top = 2 ** self.exp_bits - (2 if self.special == "ieee" else 1)
        return top - self.bias

    @property
    def max(self) -> float:
        top_man = 2 ** self.man_bits - (2 if self.special == "fn" else 1)
        return (1 + top_man / 2 ** self.man_bits) * 2.0 ** self.emax

    def _binade(self, a: torch.Tensor) -> torch.Tensor:
        """floor(log2 a) clamped below at emin, exactly (read from the float32 exponent bits)."""
        if a.dtype == torch.float32:
            return ((a.view(torch.int32) >> 23) - 127).clamp_(min=self.emin)
        return (torch.frexp(a)[1] - 1).clamp_(min=self.emin)

    def _step_of(self, a: torch.Tensor) -> torch.Tensor:
        e = self._binade(a) - self.man_bits
        if a.dtype == torch.float32 and self.emin - self.man_bits >= -126:
            return ((e + 127) << 23).view(torch.float32)   # 2^e built from its bits: exact and fast
        return torch.ldexp(torch.ones_like(a), e)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Local grid spacing s(x) = 2^(max(⌊log2|x|⌋, emin) − m): scale-aware AdaRound's step."""
        return self._step_of(x.abs().clamp(max=self.max))

    def round(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest grid value, ties to even, saturating at ±max (NaN stays NaN)."""
        a = x.abs().clamp_(max=self.max)
        s = self._step_of(a)
        return torch.copysign(torch.round(a / s).mul_(s), x)

    def floor(self, x: torch.Tensor) -> torch.Tensor:
        """Largest grid value ≤ x (within ±max); x lies in [floor(x), floor(x) + step(x)]."""
        a = x.abs().clamp(max=self.max)
        s = self._step_of(a)
        return torch.where(x >= 0, torch.floor(a / s) * s, -torch.ceil(a / s) * s)

    def encode(self, q: torch.Tensor) -> torch.Tensor:
        """Bit patterns (int32) of grid values: sign | exponent field | mantissa field."""
        a = q.abs()
        normal = a >= 2.0 ** self.emin
        e = self._binade(a)
        man = torch.where(normal, a / self._step_of(a) - 2 ** self.man_bits,
                          a / 2.0 ** (self.emin - self.man_bits))
        exp_field = torch.where(normal, e + self.bias, torch.zeros_like(e))
        sign = torch.signbit(q) & (a > 0 if self.special == "fnuz" else torch.ones_like(normal))
        return ((sign.to(torch.int32) << (self.exp_bits + self.man_bits)) | (exp_field.to(torch.int32) << self.man_bits)
                | man.round().to(torch.int32))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        c = codes.to(torch.int32)
        man = (c & (2 ** self.man_bits - 1)).float()
        exp_field = (c >> self.man_bits) & (2 ** self.exp_bits - 1)
        sign = (c >> (self.exp_bits + self.man_bits)) & 1
        sub = exp_field == 0
        e = torch.where(sub, torch.full_like(exp_field, self.emin), exp_field - self.bias)
        mag = torch.ldexp(torch.where(sub, man, man + 2 ** self.man_bits), e - self.man_bits)
        return torch.where(sign.bool(), -mag, mag)

    def grid(self) -> torch.Tensor:
        """Every finite non-negative grid value, ascending."""
        codes = torch.arange(2 ** (self.exp_bits + self.man_bits))
        v = self.decode(codes)
        return v[v <= self.max]


@dataclass(frozen=True)
class MxFormat:
    """OCP Microscaling: blocks of `block` elements share a power-of-two E8M0 scale
    2^(⌊log2 amax⌋ − emax_elem); elements use `element` and saturate."""
    element: FpFormat | IntFormat
    block: int = 32

    @property
    def name(self) -> str:
        el = self.element
        kind = f"int{el.bits}" if isinstance(el, IntFormat) else f"fp{el.code_bits}"
        return f"mx{kind}" + ("" if self.block == 32 else f"b{self.block}")

    @property
    def code_bits(self) -> int:
        return self.element.code_bits

    @property
    def emax_elem(self) -> int:
        return int(math.floor(math.log2(self.element.max)))

    def shared_exponent(self, amax: torch.Tensor) -> torch.Tensor:
        """E8M0 exponent per block (int32, unbiased), clamped to E8M0's range."""
        e = torch.frexp(amax.clamp(min=2.0 ** -126))[1] - 1
        return (e - self.emax_elem).clamp_(-127, 127)

    def scale(self, amax: torch.Tensor) -> torch.Tensor:
        """The block scale 2^shared_exponent as a float tensor shaped like amax."""
        return torch.ldexp(torch.ones_like(amax), self.shared_exponent(amax))


def _default_special(e: int, m: int) -> str:
    if 1 + e + m <= 6:
        return "finite"          # OCP FP4 / FP6 (and E3M0)
    if (e, m) == (4, 3):
        return "fn"              # OCP FP8 E4M3
    return "ieee"                # E5M2, E3M4, E5M10 (= float16)


MX_ELEMENTS = {"mxfp4": "e2m1", "mxfp6": "e2m3", "mxfp8": "e4m3", "mxint8": "int8"}
_FP_RE = re.compile(r"^e(\d)m(\d+)(ieee|fnuz|fn|finite)?(?:b(-?\d+))?$")
_INT_RE = re.compile(r"^(u?)int(\d+)$")
_MX_RE = re.compile(r"^(mxfp4|mxfp6|mxfp8|mxint8)(?:b(\d+))?$")


def parse_format(name: str) -> IntFormat | FpFormat | MxFormat:
    """`int8`, `uint4`, `e2m1`, `e4m3fn`, `e4m3ieee`, `e5m2fnuz`, `e3m0`, `mxfp4`, `mxint8`, `mxfp6b16` → a format."""
    key = name.strip().lower()
    if m := _INT_RE.match(key):
        return IntFormat(int(m.group(2)), signed=not m.group(1))
    if m := _FP_RE.match(key):
        e, man = int(m.group(1)), int(m.group(2))
        fmt = FpFormat(e, man, m.group(3) or _default_special(e, man))
        return fmt if m.group(4) is None else FpFormat(e, man, fmt.special, int(m.group(4)))
    if m := _MX_RE.match(key):
        return MxFormat(parse_format(MX_ELEMENTS[m.group(1)]), int(m.group(2) or 32))
    raise SpecError(f"unknown number format {name!r}; use intN/uintN (N=2-8,16), eXmY[fn|fnuz|ieee] "
                    "(e.g. e2m1, e4m3fn, e5m2) or mxfp4/mxfp6/mxfp8/mxint8")
