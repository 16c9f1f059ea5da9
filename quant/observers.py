"""Clipping-range observers: min-max, percentile and an MSE-optimal clipping search.

All work on grouped values `x` of shape (..., n) and return one range per leading index, so the
same code serves per-tensor, per-channel, per-group and per-token ranges. Which one is the default
for which tensor is decided in quant.spec (min-max, MSE for ≤4-bit INT weights and <8-bit static
activations).
"""
from __future__ import annotations

import torch

from quant.formats import IntFormat

MSE_CANDIDATES = torch.linspace(0.25, 1.0, 76)   # clip = α · max, α on a 1 % grid
_CHUNK_ELEMS = 1 << 23                             # bound the (K, ..., n) search tensor at ~32 MB


def absmax(x: torch.Tensor, observer: str = "minmax", percentile: float = 99.99, fmt=None) -> torch.Tensor:
    """Symmetric clipping value per row (last axis reduced)."""
    a = x.abs()
    if observer == "minmax":
        return a.amax(-1)
    if observer == "percentile":
        return _quantile(a, percentile / 100.0)
    if observer == "mse":
        amax = a.amax(-1)
        return mse_search(x, fmt, lo=-amax, hi=amax, symmetric=True)[1]
    raise ValueError(f"unknown observer {observer}")


def minmax(x: torch.Tensor, observer: str = "minmax", percentile: float = 99.99, fmt=None):
    """Asymmetric range (lo ≤ 0 ≤ hi) per row, for zero-point formats."""
    if observer == "percentile":
        lo, hi = _quantile(x, 1 - percentile / 100.0), _quantile(x, percentile / 100.0)
    else:
        lo, hi = x.amin(-1), x.amax(-1)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if observer == "mse":
        lo, hi = mse_search(x, fmt, lo, hi, symmetric=False)
    return lo, hi


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile per row, via kthvalue (quantile refuses inputs above 16M elements)."""
    n = x.shape[-1]
    k = min(n, max(1, int(round(q * (n - 1))) + 1))
    return x.kthvalue(k, dim=-1).values


def fake_quant_range(x: torch.Tensor, fmt, lo: torch.Tensor, hi: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """Fake-quantise rows of x to the range [lo, hi] (broadcast on the last axis)."""
    if symmetric:
        scale = (hi / fmt.max).clamp(min=1e-12).unsqueeze(-1)
        return fmt.round(x / scale) * scale
    scale = ((hi - lo) / (fmt.qmax - fmt.qmin)).clamp(min=1e-12).unsqueeze(-1)
    zp = torch.round(-lo.unsqueeze(-1) / scale) + fmt.qmin
    return (torch.round(x / scale + zp).clamp(fmt.qmin, fmt.qmax) - zp) * scale


def mse_search(x: torch.Tensor, fmt, lo: torch.Tensor, hi: torch.Tensor, symmetric: bool,
               weight: torch.Tensor | None = None):
    """Shrink [lo, hi] by each α in MSE_CANDIDATES and keep, per row, the α with the least squared
    error (optionally weighted, e.g. by histogram counts); all candidates of a chunk are evaluated
    in one batched tensor op."""
    alphas = MSE_CANDIDATES.to(x.dtype)
    per_cand = max(1, x.numel())
    chunk = max(1, _CHUNK_ELEMS // per_cand)
    best_err = torch.full(lo.shape, float("inf"))
    best_alpha = torch.ones(lo.shape)
    for i in range(0, len(alphas), chunk):
        a = alphas[i:i + chunk].view(-1, *([1] * lo.ndim))
        xq = fake_quant_range(x.unsqueeze(0), fmt, lo.unsqueeze(0) * a, hi.unsqueeze(0) * a, symmetric)
        err = (xq - x.unsqueeze(0)).pow(2)
        err = (err if weight is None else err * weight).sum(-1)
        e_min, idx = err.min(0)
        better = e_min < best_err
        best_err = torch.where(better, e_min, best_err)
        best_alpha = torch.where(better, alphas[i:i + chunk][idx], best_alpha)
    return lo * best_alpha, hi * best_alpha


def is_zero_point_format(fmt) -> bool:
    return isinstance(fmt, IntFormat) and not fmt.signed
