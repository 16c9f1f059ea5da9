"""Cross-layer equalisation (CLE) with high-bias absorption (Nagel et al. 2019, "Data-Free Quantization").

For consecutive layers y = W2·f(W1·x + b1) + b2 with f positively homogeneous, scaling output channel c
of layer 1 by 1/s_c and input channel c of layer 2 by s_c is exact. s_c = sqrt(r1_c / r2_c) (r: the
channel's absolute weight range) gives both channels the range sqrt(r1_c·r2_c), which is what per-tensor
and depthwise per-channel grids need (MobileNetV2's depthwise rows span orders of magnitude).

ReLU is homogeneous; ReLU6 is not (min(x, 6) clips at a fixed value), so it becomes `ChannelClamp`, a
ReLU with a per-channel upper bound 6/s_c: still exact. Pairs are found in plain nn.Sequential chains
(see quant.bn.chains) with only Identity/Dropout and at most one ReLU/ReLU6 between them; layer 2 may
be depthwise. Triplets (expand → depthwise → project) interact, so the pairs are swept until the
scales settle. With per-channel weight grids that weight criterion buys little; the activation criterion
(`equalize(..., criterion="activation", calib=x)`) uses the same exact rescaling to fill the per-tensor
activation grid instead: on MobileNetV2 the stem's ReLU6 output feeds the first depthwise conv with
channels spanning [0.19, 0.52] next to [0, 3.2], and quantisation noise on such a narrow channel, amplified
by its large folded depthwise gain, was the biggest single activation error of W8A8.

High-bias absorption: after folding, channel c's pre-activation has mean β_c and std |γ_c| (bn_prior);
h_c = max(0, β_c − 3|γ_c|) is (almost) always below it, so it moves from b1 into b2 (b2 += W2·h) and the
clamp bound drops by h_c. Exact when the pre-activation ≥ h_c and layer 2 has no zero padding (padded
borders would see 0, not h_c), so it is only done into 1×1 convs without padding and Linear layers.
"""
from __future__ import annotations

import torch
from torch import nn

from quant.bn import PASSTHROUGH, chains
from quant.streams import Stream, equalize_streams, rescale_stream, run_hooked
from quant.streams import depthwise as _depthwise

ACTS = (nn.ReLU, nn.ReLU6)


class ChannelClamp(nn.Module):
    """ReLU with a per-channel upper bound: clamp(x, 0, upper[c]) along `axis` (1 for NCHW, -1 for tokens)."""

    def __init__(self, upper: torch.Tensor, axis: int = 1):
        super().__init__()
        self.axis = axis
        self.register_buffer("upper", upper.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.ndim
        shape[self.axis] = -1
        return torch.minimum(torch.relu(x), self.upper.view(shape))

    def extra_repr(self) -> str:
        return f"channels={self.upper.numel()}, axis={self.axis}"


def _weighted(m: nn.Module) -> bool:
    return type(m) in (nn.Conv2d, nn.Linear)


def find_pairs(model: nn.Module) -> list[tuple[str, str, str | None]]:
    """(layer1, layer2, activation name or None) for every equalisable pair, in model order."""
    pairs = []
    for chain in chains(model):
        for i, (n1, m1) in enumerate(chain):
            if not _weighted(m1) or (isinstance(m1, nn.Conv2d) and m1.groups > 1 and not _depthwise(m1)):
                continue
            j, act = i + 1, None
            while j < len(chain) and isinstance(chain[j][1], PASSTHROUGH):
                j += 1
            if j < len(chain) and isinstance(chain[j][1], (*ACTS, ChannelClamp)):
                act = chain[j][0]
                j += 1
                while j < len(chain) and isinstance(chain[j][1], PASSTHROUGH):
                    j += 1
            if j >= len(chain):
                continue
            n2, m2 = chain[j]
            if not _weighted(m2):
                continue
            c = m1.out_channels if isinstance(m1, nn.Conv2d) else m1.out_features
            if isinstance(m2, nn.Conv2d):
                if m2.groups != 1 and not _depthwise(m2):
                    continue
                if m2.in_channels != c:
                    continue
            elif not isinstance(m1, nn.Linear) or m2.in_features != c:
                continue   # conv → linear needs a flatten in between, which a chain can't hold
            pairs.append((n1, n2, act))
    return pairs


def _in_view(m2: nn.Module) -> torch.Tensor:
    """Layer 2's weight with input channels first: (C, rest)."""
    w = m2.weight
    if _depthwise(m2):
        return w.reshape(w.shape[0], -1)
    return w.transpose(0, 1).reshape(w.shape[1], -1)


def _axis(m1: nn.Module) -> int:
    return 1 if isinstance(m1, nn.Conv2d) else -1


@torch.no_grad()
def equalize(model: nn.Module, sweeps: int = 20, tol: float = 1e-4, absorb: bool = True,
             calib: torch.Tensor | None = None, criterion: str = "weight", alpha: float = 0.5,
             streams: bool = True) -> dict:
    """Equalise all pairs in place (ReLU6 between them becomes ChannelClamp); returns a report
    {"pairs", "sweeps", "criterion", "clamps": [names of replaced ReLU6], "absorbed": [layer1 names],
    "streams": [[writers], [readers]] per equalised residual stream}.

    criterion "weight" (DFQ): match the per-channel weight ranges, for per-tensor weight grids.
    criterion "activation" (needs `calib`): with per-channel weight grids a pair's row/column scaling costs
    layer 1 nothing, so spend it on the per-tensor activation grid between the layers instead — every
    channel of a depthwise consumer's input is stretched to the widest channel's range (its weight rows are
    per-channel too, so that is free); for a dense consumer the SmoothQuant balance s = R^α / W^(1−α) of
    activation range R and layer-2 column range W. One pass: each pair leaves the other pairs' activations
    unchanged, so the ranges measured before scaling stay valid. With `streams`, the activation criterion
    also balances the residual streams pairs cannot reach (quant.streams), the same way.

    With `calib`, the absorbed amount is the pre-activation's per-channel minimum on that data (exact
    there) instead of the data-free β − 3|γ| (which clips the ~0.1 % of values below it)."""
    if criterion not in ("weight", "activation"):
        raise ValueError(f"unknown equalisation criterion {criterion!r}; use weight or activation")
    if criterion == "activation" and calib is None:
        raise ValueError("activation-range equalisation needs calibration data")
    pairs = find_pairs(model)
    clamps = []
    modules = dict(model.named_modules())
    for n1, _, act in pairs:
        if act is not None and isinstance(modules[act], nn.ReLU6):
            c = modules[n1].weight.shape[0]
            _replace(model, act, ChannelClamp(torch.full((c,), 6.0), _axis(modules[n1])))
            clamps.append(act)
    modules = dict(model.named_modules())
    done = 0
    if criterion == "activation":
        highs = _channel_highs(model, modules, pairs, calib)
        for n1, n2, act in pairs:
            _rescale(modules, n1, n2, act, _activation_scales(highs[act or n1], modules[n2], alpha))
        done = 1
    for done in range(1, sweeps + 1 if criterion == "weight" else 0):
        worst = 0.0
        for n1, n2, act in pairs:
            m1, m2 = modules[n1], modules[n2]
            r1 = m1.weight.reshape(m1.weight.shape[0], -1).abs().amax(1)
            r2 = _in_view(m2).abs().amax(1)
            ok = (r1 > 0) & (r2 > 0)
            s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, 1)), torch.ones_like(r1))
            _rescale(modules, n1, n2, act, s)
            worst = max(worst, s.log().abs().max().item())
        if worst < tol:
            break
    if absorb and calib is not None:
        _observed_floor(model, modules, pairs, calib)
    absorbed = _absorb_high_bias(modules, pairs) if absorb else []
    balanced = []
    if streams and criterion == "activation":
        balanced = equalize_streams(model, calib, alpha, skip={(a, b) for a, b, _ in pairs})["streams"]
    return {"pairs": [[a, b] for a, b, _ in pairs], "sweeps": done, "criterion": criterion, "clamps": clamps,
            "absorbed": absorbed, "streams": balanced}


def _rescale(modules: dict, n1: str, n2: str, act: str | None, s: torch.Tensor) -> None:
    """Divide layer 1's output channel c (weights, bias, BN prior, clamp bound) by s_c; multiply layer 2's input:
    a pair is a stream with one writer and one reader, plus the clamp between them."""
    rescale_stream(Stream((n1,), (n2,)), modules, s)
    if act is not None and isinstance(modules[act], ChannelClamp):
        modules[act].upper.div_(s)


def _activation_scales(high: torch.Tensor, m2: nn.Module, alpha: float) -> torch.Tensor:
    """Per-channel s for the activation criterion; dead channels (range 0) keep s = 1."""
    ok = high > 0
    if _depthwise(m2):
        s = high / high.max().clamp(min=1e-12)
    else:
        w = _in_view(m2).abs().amax(1)
        ok &= w > 0
        s = high.clamp(min=1e-12) ** alpha / w.clamp(min=1e-12) ** (1 - alpha)
        s = s / s[ok].max() if ok.any() else s
    return torch.where(ok, s, torch.ones_like(s))


@torch.no_grad()
def _channel_highs(model: nn.Module, modules: dict, pairs, calib: torch.Tensor) -> dict:
    """Per-channel absolute maximum, on `calib`, of what layer 2 of each pair reads (after the activation)."""
    highs: dict[str, torch.Tensor] = {}

    def hook(m, _i, y, name):
        dims = (0, *range(2, y.ndim)) if _axis(modules[name_to_l1[name]]) == 1 else tuple(range(y.ndim - 1))
        h = y.abs().amax(dim=dims)
        highs[name] = h if name not in highs else torch.maximum(highs[name], h)

    name_to_l1 = {act or n1: n1 for n1, _, act in pairs}
    run_hooked(model, {k: modules[k] for k in name_to_l1}, hook, calib)
    return highs


@torch.no_grad()
def _observed_floor(model: nn.Module, modules: dict, pairs, calib: torch.Tensor) -> None:
    """Replace bn_prior by (per-channel min of layer 1's output on calib, 0): the absorbed h is that min."""
    names = [n1 for n1, _, act in pairs if act is not None]
    lows: dict[str, torch.Tensor] = {}

    def hook(m, _i, y, name):
        dims = (0, *range(2, y.ndim)) if isinstance(m, nn.Conv2d) else tuple(range(y.ndim - 1))
        low = y.amin(dim=dims)
        lows[name] = low if name not in lows else torch.minimum(lows[name], low)

    run_hooked(model, {n: modules[n] for n in names}, hook, calib)
    for n, low in lows.items():
        modules[n].bn_prior = (low, torch.zeros_like(low))


def _absorbable(m2: nn.Module) -> bool:
    """Layer 2 sees a constant input shift as a constant output shift only without zero padding."""
    if isinstance(m2, nn.Linear):
        return True
    return not _depthwise(m2) and not isinstance(m2.padding, str) and all(p == 0 for p in m2.padding)


@torch.no_grad()
def _absorb_high_bias(modules: dict, pairs) -> list[str]:
    done = []
    for n1, n2, act in pairs:
        m1, m2 = modules[n1], modules[n2]
        prior = getattr(m1, "bn_prior", None)
        if act is None or prior is None or m1.bias is None or not _absorbable(m2):
            continue
        h = (prior[0] - 3 * prior[1]).clamp(min=0)
        clamp = modules[act] if isinstance(modules[act], ChannelClamp) else None
        if clamp is not None:
            h = torch.minimum(h, clamp.upper)
            clamp.upper.sub_(h)
        if not bool((h > 0).any()):
            continue
        m1.bias.sub_(h)
        m1.bn_prior = (prior[0] - h, prior[1])
        w2 = m2.weight.reshape(m2.weight.shape[0], m2.weight.shape[1], -1).sum(-1)   # (out, in)
        if m2.bias is None:
            m2.bias = nn.Parameter(torch.zeros(w2.shape[0]), requires_grad=m2.weight.requires_grad)
        m2.bias.add_(w2 @ h)
        done.append(n1)
    return done


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def describe_graph(model: nn.Module, folded: bool) -> dict:
    """What `restore_graph` needs to rebuild a prepared model's structure (stored with the checkpoint)."""
    clamps = {n: [m.upper.numel(), m.axis] for n, m in model.named_modules() if isinstance(m, ChannelClamp)}
    biased = [n for n, m in model.named_modules() if _weighted(m) and m.bias is not None]
    return {"fold_bn": folded, "clamps": list(clamps), "clamp_channels": clamps, "biased": biased}


def restore_graph(model: nn.Module, graph: dict) -> nn.Module:
    """Give a freshly built float model the structure a prepared one had (BN folded, ReLU6 → ChannelClamp,
    absorbed biases), so a checkpoint of the prepared model loads onto it; values come from the checkpoint."""
    from quant.bn import fold_bn
    if graph.get("fold_bn"):
        fold_bn(model)
    modules = dict(model.named_modules())
    for name in graph.get("clamps", ()):
        prev = graph["clamp_channels"][name]
        _replace(model, name, ChannelClamp(torch.full((prev[0],), 6.0), prev[1]))
    for name in graph.get("biased", ()):
        m = modules[name]
        if m.bias is None:
            m.bias = nn.Parameter(torch.zeros(m.weight.shape[0]), requires_grad=False)
    return model
