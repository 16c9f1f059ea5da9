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
