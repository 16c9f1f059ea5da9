"""BatchNorm folding (before quantisation) and re-estimation (after it).

Folding: a Conv2d directly followed by an eval-mode BatchNorm2d computes γ·(Wx + b − μ)/σ + β, which is
one conv with W' = W·γ/σ (per output row) and b' = (b − μ)·γ/σ + β. The device runs the folded conv,
so the weights must be quantised *after* folding (per-tensor scales see the real ranges) and CLE /
bias correction need the folded bias. The BN becomes `nn.Identity`, the conv gains a bias, and the
folded BN's output statistics (β, |γ|) stay on the conv as `bn_prior` for high-bias absorption.

Dataflow is read from `nn.Sequential` containers (nested ones flattened), the idiom every bundled and
ImageNet CNN here uses; a BN reached any other way is left alone and counted as unfolded.

Re-estimation: with BN kept unfolded, quantised conv weights shift the per-channel mean/variance of
the conv outputs; re-estimating the running statistics on calibration data makes BN normalise the
quantised outputs again (the first two moments match the float model's).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

PASSTHROUGH = (nn.Identity, nn.Dropout)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def wrapped_child(m: nn.Module) -> str | None:
    """Name of the one plain-Sequential child whose output `m` returns unchanged (`forward = self.conv(x)`,
    e.g. an inverted-residual block without its skip), found by tracing `m`; None for anything else."""
    if not any(_is_plain_sequential(c) for c in m.children()):
        return None
    import torch.fx

    class ChildrenAsLeaves(torch.fx.Tracer):
        def is_leaf_module(self, mod: nn.Module, qualname: str) -> bool:
            return "." not in qualname   # a direct child of m is one call, whatever it is

    try:
        graph = ChildrenAsLeaves().trace(m)
    except Exception:   # untraceable forward: keep the module opaque
        return None
    nodes = list(graph.nodes)
    if [n.op for n in nodes] != ["placeholder", "call_module", "output"]:
        return None
    call = nodes[1]
    ok = call.args == (nodes[0],) and not call.kwargs and nodes[2].args == (call,)
    return call.target if ok and _is_plain_sequential(m.get_submodule(call.target)) else None


def chains(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """Leaf modules in dataflow order, one list per outermost plain nn.Sequential (nested ones inlined).

    A composite child that only wraps a Sequential (see `wrapped_child`) is inlined too, so the stem conv
    of MobileNetV2 pairs with the first depthwise; any other composite child (e.g. a residual block) is one
    opaque element that breaks adjacency, and its own Sequentials become chains of their own."""
    out: list[list[tuple[str, nn.Module]]] = []

    def flatten(seq: nn.Module, prefix: str, chain: list) -> None:
        for n, c in seq.named_children():
            name = _join(prefix, n)
            inner = None if _is_plain_sequential(c) else wrapped_child(c)
            if _is_plain_sequential(c):
                flatten(c, name, chain)
            elif inner is not None:
                flatten(c.get_submodule(inner), _join(name, inner), chain)
            else:
                chain.append((name, c))
                visit(c, name)

    def visit(mod: nn.Module, prefix: str) -> None:
        for n, c in mod.named_children():
            name = _join(prefix, n)
            if _is_plain_sequential(c):
                chain: list = []
                flatten(c, name, chain)
                out.append(chain)
            else:
                visit(c, name)

    if _is_plain_sequential(model):
        chain: list = []
        flatten(model, "", chain)
        out.append(chain)
    else:
        visit(model, "")
    return out


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@torch.no_grad()
def fold_bn(model: nn.Module) -> dict:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, in place.

    Returns {"folded": [[conv, bn], ...], "unfolded": [bn names not reached]}."""
    folded = []
    for chain in chains(model):
        for (cname, conv), (bname, bn) in zip(chain, chain[1:]):
            if type(conv) is not nn.Conv2d or not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None:
                continue
            std = torch.sqrt(bn.running_var + bn.eps)
            gamma = bn.weight if bn.affine else torch.ones_like(std)
            beta = bn.bias if bn.affine else torch.zeros_like(std)
            k = gamma / std
            b = conv.bias if conv.bias is not None else torch.zeros_like(std)
            conv.weight.mul_(k.view(-1, *([1] * (conv.weight.ndim - 1))))
            new_bias = (b - bn.running_mean) * k + beta
            conv.bias = nn.Parameter(new_bias.detach().clone(), requires_grad=conv.weight.requires_grad)
            conv.bn_prior = (beta.detach().clone(), gamma.detach().abs().clone())   # mean, std of the output
            _set(model, bname, nn.Identity())
            folded.append([cname, bname])
    unfolded = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return {"folded": folded, "unfolded": unfolded}


def batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_bn(model: nn.Module, calib: torch.Tensor, batch: int = 64) -> dict:
    """Recompute the running mean/var of every BatchNorm in `model` (in place) from `calib`.

    Cumulative averages over all batches (momentum None); everything else stays in eval mode, so the
    quantisers and dropout behave as at inference. Returns {"layers": n, "images": n}."""
    bns = batchnorms(model)
    if not bns:
        return {"layers": 0, "images": 0}
    saved = [(m, m.momentum) for _, m in bns]
    model.eval()
    for _, m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for x in calib.split(batch):
            model(x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
            m.eval()
    return {"layers": len(bns), "images": len(calib)}


# -- BatchNorms that follow a Conv2d / Linear anywhere in the graph (torch.fx) -----------------------------

_RESHAPES = {"flatten", "reshape", "view"}


class NormPair(NamedTuple):
    """`norm` (an eval BatchNorm) reads only `layer`'s output; `view` is the broadcast shape of a per-channel
    vector at the norm's input ((1, C, 1, 1) for BatchNorm2d after a conv, (1, C) for BatchNorm1d on a
    Linear's tokens flattened to rows)."""
    layer: str
    norm: str
    view: tuple[int, ...]


def norm_act_parts(bn: nn.Module) -> tuple[str, ...] | None:
    """Children a BatchNorm module applies after normalising, in order: () for plain BatchNorm1d/2d,
    ("drop", "act") for timm's BatchNormAct2d (normalise, dropout, activation); None for any other subclass,
    whose forward is unknown and so never folded."""
    if type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return ()
    if isinstance(bn, nn.BatchNorm2d) and type(bn).__name__ == "BatchNormAct2d" and \
            {n for n, _ in bn.named_children()} <= {"drop", "act"}:
        return tuple(n for n in ("drop", "act") if isinstance(getattr(bn, n, None), nn.Module))
    return None


class _NormTracer(torch.fx.Tracer):
    """Conv/Linear (also quantised ones), every BatchNorm and every module without children are single calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))
                or not any(True for _ in m.children()) or super().is_leaf_module(m, qualname))


def _graph_pairs(root: nn.Module, prefix: str) -> list[tuple[str, str, bool]] | None:
    """(layer, norm, through_reshape) in `root`'s fx graph; None when it cannot be traced."""
    try:
        graph = _NormTracer().trace(root)
    except Exception:   # data-dependent control flow, unsupported ops: no pairs rather than a wrong one
        return None
    modules = dict(root.named_modules())
    mod = lambda n: modules.get(n.target) if n.op == "call_module" else None   # noqa: E731
    out = []
    for n in graph.nodes:
        if not isinstance(mod(n), (nn.Conv2d, nn.Linear)):
            continue
        cur, reshaped = n, False
        while len(cur.users) == 1:
            u = next(iter(cur.users))
            if u.args[:1] != (cur,):
                break
            if (u.op == "call_method" and u.target in _RESHAPES) or \
                    (u.op == "call_function" and u.target in (torch.flatten, torch.reshape)):
                cur, reshaped = u, True
                continue
            if isinstance(mod(u), nn.modules.batchnorm._BatchNorm) and len(u.args) == 1 and not u.kwargs:
                out.append((prefix + n.target, prefix + u.target, reshaped))
            break
    return out


@torch.no_grad()
def norm_pairs(model: nn.Module, example: torch.Tensor, layers=None) -> list[NormPair]:
    """Every eval BatchNorm that reads nothing but one Conv2d's / Linear's output, found in the torch.fx graph.

    The graph is the whole model's, or — when fx cannot trace the whole model (data-dependent control flow)
    — each BatchNorm's parent's, which is where conv+norm modules (timm's ConvNormAct, a ResNet block) pair
    them. Between a Linear and a BatchNorm1d only reshapes that keep the feature axis last are allowed (LeViT's
    Linear → flatten(0, 1) → BatchNorm1d). One forward of `example` checks the shapes and that each module
    runs once. `layers` (names) limits the writers considered; `model` is not changed.
    """
    pairs = _graph_pairs(model, "")
    if pairs is None:
        pairs, roots = [], []
        for name, m in model.named_modules():
            parent = name.rpartition(".")[0]
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and name and parent not in roots:
                roots.append(parent)
        for parent in roots:
            pairs += _graph_pairs(model.get_submodule(parent), parent + "." if parent else "") or []
    if layers is not None:
        pairs = [p for p in pairs if p[0] in set(layers)]
    if not pairs:
        return []
    modules = dict(model.named_modules())
    seen: dict[str, list] = {}

    def hook(m, inputs, output, name):
        seen.setdefault(name, []).append((tuple(inputs[0].shape), tuple(output.shape)))
    handles = [modules[n].register_forward_hook(lambda m, i, y, n=n: hook(m, i, y, n)) for p in pairs for n in p[:2]]
    try:
        model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    out = []
    for layer, norm, reshaped in pairs:
        bn, w = modules[norm], modules[layer]
        if len(seen.get(layer, ())) != 1 or len(seen.get(norm, ())) != 1 or norm_act_parts(bn) is None \
                or bn.running_mean is None or bn.training:
            continue
        (_, y), (x, _) = seen[layer][0], seen[norm][0]
        channels = w.out_channels if isinstance(w, nn.Conv2d) else w.out_features
        if bn.num_features != channels:
            continue
        if isinstance(w, nn.Conv2d) and not reshaped and len(x) == 4 and x == y:
            out.append(NormPair(layer, norm, (1, -1, 1, 1)))
        elif isinstance(w, nn.Linear) and len(x) == 2 and x[-1] == y[-1] == channels:
            out.append(NormPair(layer, norm, (1, -1)))
    return out
