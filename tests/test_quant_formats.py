"""Number formats: bit-exact against ml_dtypes, and the grid properties every format must have."""
import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quant import SpecError, parse_format
from quant.formats import FpFormat, IntFormat, MxFormat

ML_DTYPES = {"e2m1": ml_dtypes.float4_e2m1fn, "e2m3": ml_dtypes.float6_e2m3fn, "e3m2": ml_dtypes.float6_e3m2fn,
             "e4m3fn": ml_dtypes.float8_e4m3fn, "e4m3ieee": ml_dtypes.float8_e4m3, "e5m2": ml_dtypes.float8_e5m2,
             "e3m4": ml_dtypes.float8_e3m4, "e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
             "e5m2fnuz": ml_dtypes.float8_e5m2fnuz, "e5m10": np.float16}
FORMATS = ["int2", "int4", "int8", "uint8", "int16", "e2m1", "e3m0", "e2m3", "e3m2", "e4m3fn", "e5m2", "e3m4", "e5m10"]


def _sweep(fmt) -> torch.Tensor:
    """Every grid point, every midpoint (ties), their float32 neighbours, and a dense random sweep."""
    g = fmt.grid()
    mids = (g[1:] + g[:-1]) / 2
    x = torch.cat([g, mids, torch.nextafter(mids, torch.tensor(0.0)), torch.nextafter(mids, torch.tensor(1e30)),
                   torch.rand(20000, generator=torch.Generator().manual_seed(0)) * fmt.max,
                   torch.rand(2000, generator=torch.Generator().manual_seed(1)) * g[1] * 2])
    return torch.cat([x, -x])


@pytest.mark.parametrize("name", ML_DTYPES)
def test_round_and_codes_match_ml_dtypes_bit_for_bit(name):
    fmt, dt = parse_format(name), ML_DTYPES[name]
    assert fmt.max == float(ml_dtypes.finfo(dt).max)
    x = _sweep(fmt)
    cast = x.numpy().astype(dt)
    assert torch.equal(fmt.round(x), torch.from_numpy(cast.astype(np.float32)))
    bits = cast.view(np.uint16 if dt is np.float16 else np.uint8).astype(np.int32)
    codes = fmt.encode(fmt.round(x))
    assert torch.equal(codes, torch.from_numpy(bits))
    assert torch.equal(fmt.decode(codes), fmt.round(x))


@pytest.mark.parametrize("name,maxval", [("e2m1", 6.0), ("e3m0", 16.0), ("e2m3", 7.5), ("e3m2", 28.0),
                                         ("e4m3fn", 448.0), ("e5m2", 57344.0), ("e3m4", 15.5), ("int4", 7.0)])
def test_max_values(name, maxval):
    assert parse_format(name).max == maxval


def test_e3m0_grid_is_powers_of_two():
    assert parse_format("e3m0").grid().tolist() == [0.0] + [2.0 ** e for e in range(-2, 5)]


@pytest.mark.parametrize("name", FORMATS)
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e5, 1e5, allow_nan=False, width=32), min_size=1, max_size=64))
def test_grid_properties(name, values):
    fmt = parse_format(name)
    x = torch.tensor(values, dtype=torch.float32)
    q = fmt.round(x)
    assert torch.equal(fmt.round(q), q)                                   # idempotent
    assert (fmt.round(x.sort().values).diff() >= 0).all()                # monotone
    lowest = fmt.qmin if isinstance(fmt, IntFormat) else -fmt.max
    inside = (x <= fmt.max) & (x >= lowest)
    assert ((q - x).abs()[inside] <= fmt.step(x)[inside] / 2).all()       # error ≤ half a step
    assert (q[x > fmt.max] == fmt.max).all() and (q[x < lowest] == lowest).all()   # saturation
    assert q.abs().max() <= fmt.max


@pytest.mark.parametrize("name", ["e2m1", "e2m3", "e4m3fn", "e5m2", "int4"])
@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-500, 500, allow_nan=False, width=32), min_size=1, max_size=64))
def test_floor_and_step_bracket_x(name, values):
    """AdaRound's contract: x ∈ [floor(x), floor(x) + step(x)] and both ends are grid points."""
    fmt = parse_format(name)
    x = torch.tensor(values).clamp(-fmt.max if not isinstance(fmt, IntFormat) else fmt.qmin, fmt.max)
    down = fmt.floor(x)
    up = down + fmt.step(x)
    assert (down <= x).all() and (x <= up).all()
    assert torch.equal(fmt.round(down), down)
    assert torch.equal(fmt.round(up.clamp(max=fmt.max)), up.clamp(max=fmt.max))


def test_mx_block_scale_is_power_of_two_and_keeps_max():
    fmt = parse_format("mxfp4")
    assert isinstance(fmt, MxFormat) and fmt.block == 32 and fmt.element == FpFormat(2, 1)
    amax = torch.tensor([6.0, 5.9, 1e-3, 100.0])
    scale = fmt.scale(amax)
    assert torch.equal(torch.frexp(scale)[0], torch.full_like(scale, 0.5))   # powers of two
    assert ((amax / scale) < 2 * fmt.element.max).all() and ((amax / scale) >= fmt.element.max / 4).all()
    assert parse_format("mxint8").element == IntFormat(8) and parse_format("mxint8").emax_elem == 6


@pytest.mark.parametrize("bad", ["int9", "int1", "e9m2", "fp4", "e4m3xx", "mxfp5"])
def test_bad_format_names_are_rejected(bad):
    with pytest.raises(SpecError):
        parse_format(bad)
