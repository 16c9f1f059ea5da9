"""AdaRound mechanics: h(V) bounds, initialisation, β annealing, hard rounding, FP local steps."""
import ml_dtypes
import numpy as np
import pytest
import torch
from torch import nn

import quant
from quant import adaround
from quant.formats import parse_format
from quant.quantizers import WeightQuantizer
from quant.spec import QConfig

torch.set_num_threads(1)


def test_rectified_sigmoid_is_bounded_and_reaches_both_ends():
    v = torch.linspace(-30, 30, 1001)
    h = adaround.rectified_sigmoid(v)
    assert h.min() == 0.0 and h.max() == 1.0
    assert bool((h[1:] >= h[:-1]).all())
    assert (h == 0).sum() > 1 and (h == 1).sum() > 1      # stretched beyond [0, 1], then clipped


def test_init_v_makes_h_equal_the_fractional_part():
    rest = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(adaround.rectified_sigmoid(adaround.init_v(rest)), rest, atol=1e-5)


def test_beta_schedule_warms_up_then_anneals_from_20_to_2():
    s = adaround.BetaSchedule(100, warmup=0.2, start=20, end=2)
    assert all(s(t) is None for t in range(20))
    betas = [s(t) for t in range(20, 100)]
    assert betas[0] == pytest.approx(20.0)
    assert betas[-1] == pytest.approx(2.0, abs=0.3)
    assert all(a >= b for a, b in zip(betas, betas[1:]))


def test_round_reg_is_zero_only_at_binary_h():
    assert adaround.round_reg(torch.tensor([0.0, 1.0, 1.0]), 2.0) == 0
    assert adaround.round_reg(torch.tensor([0.5]), 20.0) == pytest.approx(1.0)
    assert adaround.round_reg(torch.tensor([0.3]), 2.0) > 0


@pytest.mark.parametrize("fmt", ["e2m1", "e2m3", "e3m2", "e4m3fn", "e5m2", "e3m0"])
def test_fp_neighbours_are_adjacent_grid_values(fmt):
    """floor and floor+s(x) are consecutive grid values on both sides of zero (ml_dtypes as oracle
    for the grid), and s(x) is FP4DiT's 2^(⌊log2|x|⌋−m) clamped to the subnormal step."""
    f = parse_format(fmt)
    grid = f.grid()
    x = (torch.rand(4000, generator=torch.Generator().manual_seed(1)) * 2 - 1) * f.max
    sign, lo, s = adaround.neighbours(x, f)
    hi = (lo + s).clamp(max=f.max)
    # both candidates are on the grid
    for cand in (lo, hi):
        assert bool(torch.isin(cand, grid).all())
    # no grid value strictly between them, and |x| lies in [lo, lo + s]
    inside = (grid.view(1, -1) > lo.view(-1, 1)) & (grid.view(1, -1) < hi.view(-1, 1))
    assert not bool(inside.any())
    assert bool(((x.abs() >= lo) & (x.abs() <= lo + s)).all())
    # local step formula against the bit-exact ml_dtypes grid: s = 2^(max(floor(log2|x|), emin) - m)
    e = torch.floor(torch.log2(x.abs().clamp(min=1e-30))).clamp(min=f.emin)
    assert torch.equal(s, torch.exp2(e - f.man_bits))
    dtype = {"e2m1": ml_dtypes.float4_e2m1fn, "e2m3": ml_dtypes.float6_e2m3fn, "e3m2": ml_dtypes.float6_e3m2fn,
             "e4m3fn": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2, "e3m0": None}[fmt]
    if dtype is not None:
        assert np.array_equal(lo.numpy().astype(dtype).astype(np.float32), lo.numpy())


def _wq(fmt: str, gran: str, w: torch.Tensor, gs: int = 0) -> WeightQuantizer:
    return WeightQuantizer(QConfig(fmt, gran, gs), tuple(w.shape)).fit(w)


@pytest.mark.parametrize("fmt,gran,gs", [("int4", "channel", 0), ("e2m1", "group", 16), ("mxfp4", "block", 32),
                                         ("mxint8", "block", 32), ("e4m3fn", "channel", 0)])
def test_hard_rounding_picks_a_neighbour_and_threshold_is_half(fmt, gran, gs):
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    wq = _wq(fmt, gran, w, gs)
    ar = adaround.AdaRound(wq, w)
    wq.rounding = ar
    # soft rounding at init reproduces the weight (h = fractional part), saturated at the grid's max
    x = wq.to_groups(w) / wq.scale.unsqueeze(-1)
    fmax = wq.grid_fmt.max
    assert torch.allclose(ar(x, wq.grid_fmt), x.clamp(-fmax, fmax), atol=1e-5 * fmax)
    with torch.no_grad():
        ar.v.normal_(0, 3, generator=torch.Generator().manual_seed(2))
    ar.harden()
    q = wq.grid_values(w)
    up = (adaround.rectified_sigmoid(ar.v) >= 0.5)
    expected = ar.sign * (ar.lo + up * ar.step).clamp(max=wq.grid_fmt.max)
    assert torch.equal(q, expected)
    # every value is one of the two neighbours: on the grid, and within one local step of x
    assert bool(((q - x).abs() <= ar.step + 1e-6).all())
    assert torch.equal(wq.grid_fmt.round(q), q)


def test_bake_keeps_codes_and_drops_the_callable():
    torch.manual_seed(0)
    layer = nn.Linear(64, 16)
    q = quant.quantize_model(nn.Sequential(layer), quant.parse_spec("fp4", "w4a16"), torch.randn(4, 64))
    m = q[0]
    ar = adaround.attach(m)
    with torch.no_grad():
        ar.v.copy_(torch.randn_like(ar.v) * 4)
    ar.harden()
    codes_learned = m.weight_quant.codes(m.weight)
    adaround.bake(m)
    assert m.weight_quant.rounding is None
    assert torch.equal(m.weight_quant.codes(m.weight), codes_learned)
    assert ar.flipped_fraction() > 0.1     # random V moves many weights off round-to-nearest


def test_gradient_reaches_v_only():
    torch.manual_seed(0)
    w = torch.randn(4, 32)
    wq = _wq("e2m1", "channel", w)
    ar = adaround.AdaRound(wq, w)
    wq.rounding = ar
    wq.quantize(w).pow(2).sum().backward()
    assert ar.v.grad is not None and ar.v.grad.abs().sum() > 0
