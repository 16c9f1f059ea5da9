"""Residual-stream equalisation (quant.streams): which tensors form a stream, exactness, balanced ranges."""
import copy

import torch
from torch import nn

import quant
from quant.bn import fold_bn
from quant.equalize import equalize
from quant.streams import equalize_streams, find_streams

torch.set_num_threads(1)


class Bottleneck(nn.Module):
    """Linear bottleneck: expand 1×1 → ReLU6 → project 1×1 (no activation), skip when shapes allow."""

    def __init__(self, cin, cout, hidden=16, residual=True):
        super().__init__()
        self.residual = residual and cin == cout
        self.conv = nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.ReLU6(), nn.Conv2d(hidden, cout, 1))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


def stream_net(seed=0, head="conv"):
    """stem → three bottlenecks on one 8-channel stream (the first one starts it: no skip, as at each
    MobileNetV2 stage) → a head that reads the stream (a 1×1 conv, or a ReLU, which makes the stream
    unscalable), with very unequal stream channel ranges."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Bottleneck(8, 8, residual=False), Bottleneck(8, 8),
                        Bottleneck(8, 8), nn.Conv2d(8, 4, 1) if head == "conv" else nn.ReLU())
    with torch.no_grad():
        for block in net[2:5]:
            gain = torch.logspace(-2, 1, 8)
            block.conv[2].weight.mul_(gain.view(-1, 1, 1, 1))
            block.conv[2].bias.mul_(gain)
    return net.eval()


def test_a_stream_joins_every_writer_and_reader_of_the_skips():
    streams = find_streams(stream_net())
    assert len(streams) == 1
    s = streams[0]
    assert s.writers == ("2.conv.2", "3.conv.2", "4.conv.2")
    assert s.readers == ("3.conv.0", "4.conv.0", "5")


def test_a_stream_read_by_a_nonlinearity_or_fed_by_one_is_left_alone():
    assert find_streams(stream_net(head="relu")) == []
    # the first bottleneck's skip adds the stem's ReLU output: no weighted writer owns that tensor
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), Bottleneck(8, 8), nn.Conv2d(8, 4, 1))
    assert find_streams(net) == []


def test_an_untraceable_model_has_no_streams():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y) if y.sum() > 0 else y

    assert find_streams(DataDependent()) is None
    assert equalize_streams(DataDependent(), torch.randn(2, 3, 4, 4)) == {"streams": [], "traced": False}


def _stream_highs(model, x):
    seen = []
    h = model[5].register_forward_pre_hook(lambda m, i: seen.append(i[0].abs().amax((0, 2, 3))))
    model(x)
    h.remove()
    return seen[0]


@torch.no_grad()
def test_stream_equalisation_is_exact_and_narrows_the_channel_spread():
    model, x = stream_net(), torch.randn(16, 3, 8, 8)
    ref, before = model(x), _stream_highs(model, x)
    r = equalize_streams(model, x, alpha=0.5)
    assert r["traced"] and len(r["streams"]) == 1
    assert ((model(x) - ref).norm() / ref.norm()).item() < 1e-5
    after = _stream_highs(model, x)
    spread = lambda h: (h.max() / h.min()).item()   # noqa: E731
    assert spread(before) > 100 and spread(after) < spread(before) / 10


@torch.no_grad()
def test_stream_equalisation_lowers_the_8bit_error_where_the_stream_is_read():
    """Only the readers are quantised (their inputs per tensor, their scaled columns per row): the trade the
    scales make. Mean over five random nets, as one seed's margin is small (+3.4 dB) and others large (+8.9)."""
    spec = quant.parse_spec("int", "w8a8", keep_float=["0", "2.conv.0", "2.conv.2", "3.conv.2", "4.conv.2"])
    gains = []
    for seed in range(5):
        model = stream_net(seed)
        x = torch.randn(64, 3, 8, 8)
        ref = model(x)
        plain = quant.quantize_model(model, spec, x)
        balanced = copy.deepcopy(model)
        equalize_streams(balanced, x)
        gains.append(quant.sqnr_db(ref, quant.quantize_model(balanced, spec, x)(x)) - quant.sqnr_db(ref, plain(x)))
    assert min(gains) > 0 and sum(gains) / len(gains) > 4


@torch.no_grad()
def test_equalize_reports_streams_and_leaves_pairs_to_cle():
    class Net(nn.Module):   # a BN-folded bottleneck stack like MobileNetV2's
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
            self.blocks = nn.Sequential(Bottleneck(8, 8, residual=False), Bottleneck(8, 8))
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))

    torch.manual_seed(0)
    model = Net().eval()
    fold_bn(model)
    x = torch.randn(16, 3, 8, 8)
    ref = model(x)
    r = equalize(model, calib=x, criterion="activation", absorb=False)
    assert r["streams"] == [[["blocks.0.conv.2", "blocks.1.conv.2"], ["blocks.1.conv.0", "head"]]]
    assert ((model(x) - ref).norm() / ref.norm()).item() < 1e-5
    assert equalize(copy.deepcopy(model), calib=x, criterion="activation", streams=False)["streams"] == []
    assert equalize(copy.deepcopy(model), criterion="weight")["streams"] == []


def test_a_module_called_twice_is_not_rescaled():
    class Shared(nn.Module):   # one projection conv writes two tensors: scaling it for one changes the other
        def __init__(self):
            super().__init__()
            self.proj, self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.a(self.proj(x)) + torch.relu(self.proj(self.b(x)))

    assert find_streams(Shared()) == []
