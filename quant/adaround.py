"""Adaptive rounding of one weight tensor: AdaRound on INT grids, scale-aware AdaRound on FP/MX grids.

Each weight may go to one of its two grid neighbours. AdaRound (Nagel et al. 2020) learns the choice
through a continuous variable V per weight and the rectified sigmoid h(V) = clip(σ(V)(ζ−γ)+γ, 0, 1)
(ζ = 1.1, γ = −0.1), with a regulariser Σ(1 − |2h−1|^β) that pushes h to 0 or 1 as β anneals.

On an FP (ExMy) grid the two neighbours are not one uniform step apart: the spacing depends on the
binade. FP4DiT's scale-aware AdaRound therefore applies the offset in units of the *local* step
s(x) = 2^(max(⌊log2|x|⌋, emin) − m) (`fmt.step`), so q = sign(x)·(⌊|x|/s⌋·s + h·s). Working on the
magnitude keeps "floor + one step" a grid value on both sides of zero and at binade edges; with
s ≡ 1 the same formula is integer AdaRound. MX formats use it on the element grid after the block
scale, exactly as round-to-nearest does (`WeightQuantizer.grid_values`).

`AdaRound(wq, weight)` plugs into `WeightQuantizer.rounding`; `harden()` switches to h = [V ≥ 0]
(h ≥ 0.5) and `bake(layer)` writes the hard-rounded weight into the layer so later stages, codes()
and checkpoints need nothing from this module.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from quant.quantizers import WeightQuantizer

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) = clip(σ(V)(ζ−γ)+γ, 0, 1): reaches exactly 0 and 1, so rounding can become hard."""
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def init_v(rest: torch.Tensor) -> torch.Tensor:
    """V with h(V) = rest (the fractional position between the two neighbours, in [0, 1])."""
    rest = rest.clamp(0.0, 1.0)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)


def round_reg(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Σ(1 − |2h−1|^β): zero only when every h is 0 or 1."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


class BetaSchedule:
    """β for iteration t: regulariser off for the first `warmup` fraction, then β decays linearly
    from `start` to `end` (large β only penalises h far from 0/1, small β pushes all of them)."""

    def __init__(self, iters: int, warmup: float = 0.2, start: float = 20.0, end: float = 2.0):
        self.iters, self.warmup, self.start, self.end = iters, warmup, start, end
        self.decay_from = int(math.ceil(warmup * iters))

    def __call__(self, t: int) -> float | None:
        if t < self.decay_from:
            return None
        span = max(1, self.iters - self.decay_from)
        frac = min(1.0, (t - self.decay_from) / span)
        return self.end + (self.start - self.end) * (1.0 - frac)


def neighbours(x: torch.Tensor, fmt) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sign, magnitude floor, local step) of grid-unit values x: the two candidates are
    sign·floor and sign·(floor + step), both on the grid (the top one saturates at fmt.max)."""
    a = x.abs().clamp(max=fmt.max)
    s = fmt.step(a)
    lo = torch.floor(a / s) * s
    return torch.sign(x), lo, s


class AdaRound:
    """Learned rounding for one WeightQuantizer; a callable for `WeightQuantizer.rounding`.

    The grid neighbours are computed once from the (frozen) weight and scale; `v` is the only
    trainable tensor, shaped like the grouped weight (rows, groups, group_size).
    """

    def __init__(self, wq: WeightQuantizer, weight: torch.Tensor):
        with torch.no_grad():
            x = wq.to_groups(weight.detach().float()) / wq.scale.unsqueeze(-1)
            self.sign, self.lo, self.step = neighbours(x, wq.grid_fmt)
            rest = (x.abs().clamp(max=wq.grid_fmt.max) - self.lo) / self.step
        self.max = float(wq.grid_fmt.max)
        self.v = nn.Parameter(init_v(rest))
        self.nearest_up = rest > 0.5
        self.hard = False

    def h(self) -> torch.Tensor:
        return (self.v >= 0).to(self.v.dtype) if self.hard else rectified_sigmoid(self.v)

    def reg(self, beta: float) -> torch.Tensor:
        return round_reg(rectified_sigmoid(self.v), beta)

    def __call__(self, x: torch.Tensor, fmt) -> torch.Tensor:
        if x.shape != self.lo.shape:
            raise ValueError(f"AdaRound was set up for grouped shape {tuple(self.lo.shape)}, got {tuple(x.shape)}")
        return self.sign * (self.lo + self.h() * self.step).clamp(max=self.max)

    def harden(self) -> "AdaRound":
        """From now on round with h = [V ≥ 0] (i.e. h(V) ≥ 0.5)."""
        self.hard = True
        return self

    def flipped_fraction(self) -> float:
        """Share of weights whose hard rounding differs from round-to-nearest."""
        with torch.no_grad():
            return float(((self.v >= 0) != self.nearest_up).double().mean())


def attach(layer: nn.Module) -> AdaRound:
    """Give `layer.weight_quant` a fresh AdaRound (soft) and return it."""
    ar = AdaRound(layer.weight_quant, layer.weight)
    layer.weight_quant.rounding = ar
    return ar


@torch.no_grad()
def bake(layer: nn.Module) -> None:
    """Write the hard-rounded weight into `layer.weight` and drop the rounding callable: the layer
    then computes the same with plain round-to-nearest (the values are on the grid), and codes()
    and checkpoints carry the learned rounding without knowing about AdaRound."""
    wq = layer.weight_quant
    if isinstance(wq.rounding, AdaRound):
        wq.rounding.harden()
    layer.weight.copy_(wq.quantize(layer.weight))
    wq.rounding = None
    layer._wq_key = None
