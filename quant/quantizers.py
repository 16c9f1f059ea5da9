"""Weight and activation quantisers: the per-tensor objects exporters read and methods extend.

`WeightQuantizer` keeps the two steps apart: `fit(w)` computes the scales (observer), and
rounding to the grid happens in `grid_values(w)` — round-to-nearest-even unless a method sets
`rounding` (AdaRound, scale-aware FP AdaRound). `quantize(w)` is the fake-quantised weight and
`codes(w)` the integer/FP bit patterns the checkpoint packs.

Weight layout: a weight is viewed as rows = output channels, columns = everything else flattened
(Linear: in_features; Conv2d: in/groups·kh·kw). `scale[r, g]` applies to columns
g·group_size … (g+1)·group_size of row r (per-tensor: shape (1, 1); per-channel: (rows, 1)).
"""
from __future__ import annotations

import torch
from torch import nn

from quant import observers
from quant.formats import MxFormat
from quant.spec import QConfig

_FP16_NORMAL = (2.0 ** -14, 65504.0)   # weight scales are fp16 when all fit its normal range, else fp32
_TINY = 2.0 ** -40                      # floor for near-zero groups (all-zero ones get scale 1)


def _round_ste(fn, x: torch.Tensor) -> torch.Tensor:
    """fn(x) forward, identity gradient (straight-through) when x needs a gradient."""
    y = fn(x)
    return x + (y - x).detach() if x.requires_grad else y


class WeightQuantizer(nn.Module):
    """Quantiser of one weight tensor. Read by exporters: `config` (format name, granularity,
    group size), `fmt`, `scale` buffer (rows, groups), `group_size` (effective), `codes(w)`.

    rounding — optional callable `(x_grid_units, grid_fmt) -> grid values` replacing RNE; x has
    shape (rows, groups, group_size). AdaRound sets it; with it None the result is RNE.
    """

    def __init__(self, config: QConfig, weight_shape: tuple[int, ...]):
        super().__init__()
        self.config = config
        self.fmt = config.format
        self.grid_fmt = self.fmt.element if isinstance(self.fmt, MxFormat) else self.fmt
        self.weight_shape = tuple(weight_shape)
        rows = weight_shape[0]
        cols = 1
        for d in weight_shape[1:]:
            cols *= d
        self.rows, self.cols = rows, cols
        if config.granularity == "tensor":
            self.group_size, groups = rows * cols, 1
        elif config.granularity == "channel":
            self.group_size, groups = cols, 1
        else:
            self.group_size = min(config.group_size, cols) if config.granularity == "group" else config.group_size
            groups = -(-cols // self.group_size)
        scale_rows = 1 if config.granularity == "tensor" else rows
        self.register_buffer("scale", torch.ones(scale_rows, groups))
        self.scale_dtype = "float16"
        self.rounding = None

    # -- layout -------------------------------------------------------------------------------
    def to_groups(self, w: torch.Tensor) -> torch.Tensor:
        """(rows, cols…) → (scale_rows, groups, group_size), zero-padding a ragged last group."""
        w2 = w.reshape(self.scale.shape[0], -1)
        pad = self.scale.shape[1] * self.group_size - w2.shape[1]
        if pad:
            w2 = nn.functional.pad(w2, (0, pad))
        return w2.reshape(self.scale.shape[0], self.scale.shape[1], self.group_size)

    def from_groups(self, g: torch.Tensor) -> torch.Tensor:
        flat = g.reshape(self.scale.shape[0], -1)[:, : (self.rows * self.cols) // self.scale.shape[0]]
        return flat.reshape(self.weight_shape)

    # -- scales -------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, w: torch.Tensor) -> "WeightQuantizer":
        """Set `scale` from w with the configured observer (FP: max maps to the format's max)."""
        g = self.to_groups(w.detach().float())
        if isinstance(self.fmt, MxFormat):
            scale = self.fmt.scale(g.abs().amax(-1))
        else:
            amax = observers.absmax(g, self.config.observer, self.config.percentile, self.fmt)
            scale = torch.where(amax > 0, amax / self.fmt.max, torch.ones_like(amax)).clamp(min=_TINY)
            fits = bool(((scale >= _FP16_NORMAL[0]) & (scale <= _FP16_NORMAL[1])).all())
            self.scale_dtype = "float16" if fits else "float32"
            if fits:   # stored at fp16 precision, so use exactly the stored value
                scale = scale.half().float()
        self.scale.copy_(scale)
        return self

    # -- rounding -----------------------------------------------------------------------------
    def grid_values(self, w: torch.Tensor) -> torch.Tensor:
        """w / scale rounded onto the grid, shape (scale_rows, groups, group_size)."""
        x = self.to_groups(w) / self.scale.unsqueeze(-1)
        if self.rounding is not None:
            return self.rounding(x, self.grid_fmt)
        return _round_ste(self.grid_fmt.round, x)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Fake-quantised weight (same shape and dtype as w)."""
        return self.from_groups(self.grid_values(w) * self.scale.unsqueeze(-1)).to(w.dtype)

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Bit patterns (int32, low `fmt.code_bits` bits) in the weight's shape."""
        return self.from_groups(self.grid_fmt.encode(self.grid_values(w)))

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return self.from_groups(self.grid_fmt.decode(self.to_groups(codes)) * self.scale.unsqueeze(-1))

    def describe(self) -> dict:
        """What an exporter needs besides the tensors: format, granularity, effective group size."""
        return {"format": self.fmt.name, "bits": self.fmt.code_bits, "granularity": self.config.granularity,
                "group_size": self.group_size, "scale_shape": list(self.scale.shape),
                "observer": self.config.observer, "scale": "e8m0" if isinstance(self.fmt, MxFormat) else self.scale_dtype}

    def extra_repr(self) -> str:
        return f"{self.fmt.name}, {self.config.granularity}, group={self.group_size}"


class ActQuantizer(nn.Module):
    """Quantiser of one activation. Static (granularity "tensor"): `scale`/`zero_point` buffers
    fixed by calibration. Dynamic: "token" computes one scale per slice along `axis` (the feature
    axis) at run time; "block" is MX along `axis`. Zero points only for unsigned INT formats.
    """

    BINS = 2048

    def __init__(self, config: QConfig, axis: int = -1):
        super().__init__()
        self.config = config
        self.fmt = config.format
        self.axis = axis
        static = config.granularity == "tensor"   # only static quantisers have state to save
        self.register_buffer("scale", torch.ones(()) if static else None)
        self.register_buffer("zero_point", torch.zeros(()) if static and self.asymmetric else None)
        self.observing = False
        self._lo = self._hi = None
        self._counts: torch.Tensor | None = None   # second calibration pass: histogram over [_lo, _hi]

    @property
    def asymmetric(self) -> bool:
        return observers.is_zero_point_format(self.fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observe(x.detach())
            return x
        if self.config.granularity == "tensor":
            return _round_ste(self._static, x)
        if self.config.granularity == "token":
            return _round_ste(self._per_token, x)
        return _round_ste(self._mx, x)

    # -- static ------------------------------------------------------------------------------
    def _static(self, x: torch.Tensor) -> torch.Tensor:
        if self.asymmetric:
            q = torch.round(x / self.scale + self.zero_point).clamp_(self.fmt.qmin, self.fmt.qmax)
            return (q - self.zero_point) * self.scale
        return self.fmt.round(x / self.scale) * self.scale

    @property
    def needs_histogram(self) -> bool:
        """MSE and percentile observers search a histogram of *every* calibration value; it is filled in a
        second pass over the range the first found, so the result is exact and independent of batching."""
        return self.config.granularity == "tensor" and self.config.observer != "minmax"

    def start_histogram(self) -> bool:
        """Switch observing to histogram counting over the observed range; False if there is nothing to count."""
        if not self.needs_histogram or self._lo is None or not bool(self._hi > self._lo):
            return False
        self._counts = torch.zeros(self.BINS, dtype=torch.float64)
        return True

    def _observe(self, x: torch.Tensor) -> None:
        flat = x.float().reshape(-1)
        if self._counts is not None:
            self._counts += torch.histc(flat, self.BINS, float(self._lo), float(self._hi)).double()
            return
        lo, hi = flat.min(), flat.max()
        self._lo = lo if self._lo is None else torch.minimum(self._lo, lo)
        self._hi = hi if self._hi is None else torch.maximum(self._hi, hi)

    def _histogram_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) chosen by the percentile or MSE observer from the histogram of the second pass."""
        edge, width = float(self._lo), float(self._hi - self._lo) / self.BINS
        centres = edge + width * (torch.arange(self.BINS, dtype=torch.float32) + 0.5)
        counts = self._counts.float()
        if self.config.observer == "percentile":   # tails cut at (100 − p) % and p % of all values
            cum = counts.cumsum(0) / counts.sum()
            p = self.config.percentile / 100.0
            lo = torch.tensor([edge + width * float(torch.searchsorted(cum, torch.tensor(1.0 - p)))])
            hi = torch.tensor([edge + width * (float(torch.searchsorted(cum, torch.tensor(p))) + 1)])
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
            if not self.asymmetric:
                hi = torch.maximum(-lo, hi)
            return lo, hi
        lo, hi = self._lo.clamp(max=0).view(1), self._hi.clamp(min=0).view(1)
        if not self.asymmetric:
            hi = torch.maximum(-lo, hi)
            lo = -hi
        return observers.mse_search(centres.view(1, -1), self.fmt, lo, hi, not self.asymmetric, counts.view(1, -1))

    @torch.no_grad()
    def freeze(self) -> None:
        """Turn calibration statistics into `scale`/`zero_point` and stop observing."""
        self.observing = False
        if self.config.granularity != "tensor" or self._lo is None:
            return
        if self._counts is not None and self._counts.sum() > 0:
            lo, hi = self._histogram_range()
        else:   # min-max (also an MSE/percentile observer whose range is a single value)
            lo, hi = self._lo.view(1), self._hi.view(1)
            if self.asymmetric:
                lo, hi = lo.clamp(max=0), hi.clamp(min=0)
            else:
                hi = torch.maximum(-lo, hi)
        if self.asymmetric:
            scale = ((hi - lo) / (self.fmt.qmax - self.fmt.qmin)).clamp(min=1e-12)
            self.scale.copy_(scale[0])
            self.zero_point.copy_((torch.round(-lo / scale) + self.fmt.qmin)[0])
        else:
            self.scale.copy_((hi / self.fmt.max).clamp(min=1e-12)[0])
        self._counts, self._lo, self._hi = None, None, None

    # -- dynamic -----------------------------------------------------------------------------
    def _per_token(self, x: torch.Tensor) -> torch.Tensor:
        if self.asymmetric:
            lo = x.amin(self.axis, keepdim=True).clamp(max=0)
            hi = x.amax(self.axis, keepdim=True).clamp(min=0)
            scale = ((hi - lo) / (self.fmt.qmax - self.fmt.qmin)).clamp(min=1e-12)
            zp = torch.round(-lo / scale) + self.fmt.qmin
            return (torch.round(x / scale + zp).clamp(self.fmt.qmin, self.fmt.qmax) - zp) * scale
        scale = (x.abs().amax(self.axis, keepdim=True) / self.fmt.max).clamp(min=1e-12)
        return self.fmt.round(x / scale) * scale

    def _mx(self, x: torch.Tensor) -> torch.Tensor:
        xt = x.movedim(self.axis, -1)
        n, b = xt.shape[-1], self.fmt.block
        pad = (-n) % b
        g = nn.functional.pad(xt, (0, pad)) if pad else xt
        g = g.reshape(*g.shape[:-1], -1, b)
        scale = self.fmt.scale(g.abs().amax(-1, keepdim=True))
        q = (self.fmt.element.round(g / scale) * scale).reshape(*xt.shape[:-1], -1)[..., :n]
        return q.movedim(-1, self.axis)

    def describe(self) -> dict:
        d = {"format": self.fmt.name, "bits": self.fmt.code_bits, "granularity": self.config.granularity,
             "dynamic": self.config.dynamic, "axis": self.axis, "observer": self.config.observer}
        if self.config.granularity == "tensor":
            d["scale"] = float(self.scale)
            d["zero_point"] = int(self.zero_point) if self.asymmetric else None
        elif self.config.granularity == "block":
            d["block"] = self.fmt.block
        return d

    def extra_repr(self) -> str:
        return f"{self.fmt.name}, {self.config.granularity}"

