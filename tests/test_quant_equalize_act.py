"""Activation-range equalisation, wrapper inlining in the dataflow chains, and the `photos[:N]` data spec."""
import copy

import pytest
import torch
from torch import nn

from edgevit.errors import UsageError
from quant.bn import chains, fold_bn, wrapped_child
from quant.equalize import ChannelClamp, equalize, find_pairs

torch.set_num_threads(1)


class Wrapper(nn.Module):
    """An inverted-residual block without its skip: forward only calls the inner Sequential."""

    def __init__(self, cin, cout, residual=False):
        super().__init__()
        self.residual = residual
        self.conv = nn.Sequential(nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                  nn.ReLU6(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


def stem_net(seed=0, residual=False):
    """stem conv-BN-ReLU6 → wrapped depthwise block, with very unequal stem channel ranges."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()),
                        Wrapper(8, 8, residual))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(0.0, 1.0)
        net[0][0].weight.mul_(torch.logspace(-2, 0, 8).view(-1, 1, 1, 1))
    return net.eval()


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(1)
    return torch.randn(32, 3, 10, 10)


def test_a_plain_wrapper_is_inlined_but_a_residual_block_is_not():
    assert wrapped_child(Wrapper(4, 4)) == "conv"
    assert wrapped_child(Wrapper(4, 4, residual=True)) is None
    names = [n for c in chains(stem_net()) for n, _ in c]
    assert "1.conv.0" in names and names.index("1.conv.0") == names.index("0.2") + 1
    model = stem_net(residual=True)
    fold_bn(model)
    assert ("0.0", "1.conv.0", "0.2") not in find_pairs(model)


@torch.no_grad()
def test_stem_pairs_with_the_wrapped_depthwise_after_folding():
    model = stem_net()
    fold_bn(model)
    assert ("0.0", "1.conv.0", "0.2") in find_pairs(model)


def _highs(model, x):
    seen = {}
    h = model[0][2].register_forward_hook(lambda m, i, y: seen.__setitem__("y", y))
    model(x)
    h.remove()
    return seen["y"].abs().amax((0, 2, 3))


@torch.no_grad()
def test_activation_equalisation_is_exact_and_fills_the_depthwise_input_grid(data):
    model = stem_net()
    fold_bn(model)
    ref = model(data)
    before = _highs(model, data)
    r = equalize(model, calib=data, criterion="activation", absorb=False)
    assert r["criterion"] == "activation" and isinstance(model[0][2], ChannelClamp)
    assert ((model(data) - ref).norm() / ref.norm()).item() < 1e-5
    after = _highs(model, data)
    live = before > 0
    assert (before[live].min() / before.max()) < 0.2           # the case it exists for
    assert torch.allclose(after[live], after.max().expand(int(live.sum())), rtol=1e-4)


@torch.no_grad()
def test_activation_equalisation_needs_calibration_data():
    model = stem_net()
    fold_bn(model)
    with pytest.raises(ValueError, match="calibration"):
        equalize(copy.deepcopy(model), criterion="activation")
    with pytest.raises(ValueError, match="criterion"):
        equalize(model, criterion="range")


def test_photo_spec_parses_and_rejects_bad_counts():
    from edgevit.data import parse_data_spec
    assert parse_data_spec("photos").kind == "photos" and parse_data_spec("photos:20").limit == 20
    with pytest.raises(UsageError, match="positive integer"):
        parse_data_spec("photos:x")


def test_photo_halves_are_disjoint_and_keep_the_original_order():
    from edgevit.data.photos import VIEWS, photo_names, split_indices
    cal, ev = set(split_indices("calib")), set(split_indices("eval"))
    assert not cal & ev and len(cal) == len(ev) and len(cal | ev) == len(photo_names())
    assert [v[0] for v in VIEWS[:6]] == ["center", "center-flip", "topleft", "bottomright-flip", "zoom70",
                                         "zoom50-flip"]
    assert photo_names(2, "eval") == ["astronaut/center-flip", "coffee/center-flip"]
    with pytest.raises(UsageError, match="split"):
        split_indices("train")


@pytest.mark.skipif(not all(__import__("importlib").util.find_spec(m) for m in ("skimage", "sklearn")),
                    reason="needs scikit-image and scikit-learn")
def test_photo_spec_loads_unlabelled_disjoint_halves():
    from edgevit.data import calibration_tensor, load_data
    from edgevit.data.preprocess import Preprocess
    pre = Preprocess(size=16, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    x, y = load_data("photos:10", pre)
    cal = calibration_tensor("photos", pre)
    assert y is None and x.shape == (10, 3, 16, 16) and len(cal) == 63
    assert torch.cdist(x.flatten(1), cal.flatten(1)).min() > 0   # no evaluation image is a calibration image
