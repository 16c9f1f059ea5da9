"""Linear-stream equalisation: the residual streams of linear-bottleneck networks.

In MobileNetV2-style blocks the projection conv has no activation and the skip adds its output to the
block input, so a stage's blocks share one *stream*: tensors joined only by additions (and Identity /
Dropout), each written by a Conv2d/Linear and read only by Conv2d/Linear layers. Dividing channel c of
every writer's output by s_c and multiplying every reader's input channel c by s_c is exact. CLE's pairs
(quant.equalize) cannot reach these tensors — they cross block boundaries and a skip joins several
writers — yet they are the widest activations of the network: on MobileNetV2 W8A8 the stream read by the
last block's expand conv alone cost 4 dB of logit SQNR, the largest single activation error.

The scale is the SmoothQuant balance s = R^α / W^(1−α) of the stream's channel range R (over every
tensor of the stream a reader sees, on calibration data) and the dense readers' column range W;
writers' rows are free under per-output-channel weight grids, as are depthwise readers' rows. The graph
comes from torch.fx; a model it cannot trace keeps its streams as they are.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import nn

from quant.bn import PASSTHROUGH

_ADDS = (operator.add, operator.iadd, torch.add)


@dataclass(frozen=True)
class Stream:
    writers: tuple[str, ...]     # modules whose output rows are scaled by 1/s
    readers: tuple[str, ...]     # modules whose input channels are scaled by s


class _LeafTracer(torch.fx.Tracer):
    """Every module without children is one call (custom leaves such as ChannelClamp need not trace)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not any(True for _ in m.children()) or super().is_leaf_module(m, qualname)


def depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels and m.groups > 1


def _writer(m: nn.Module | None) -> bool:
    return type(m) in (nn.Conv2d, nn.Linear)


def _reader(m: nn.Module | None) -> bool:
    return type(m) is nn.Linear or (type(m) is nn.Conv2d and (m.groups == 1 or depthwise(m)))


def _combiner(node, modules: dict) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), PASSTHROUGH)
    adds = (node.op == "call_function" and node.target in _ADDS) or (node.op == "call_method" and node.target == "add")
    return adds and not node.kwargs and len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args)


def find_streams(model: nn.Module) -> list[Stream] | None:
    """Every stream of `model` in graph order; None when torch.fx cannot trace it."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception:   # data-dependent control flow, unsupported ops: no streams rather than a wrong one
        return None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    shared = {t for t, c in calls.items() if c > 1}   # a module called twice would be rescaled for both calls
    mod = lambda n: modules.get(n.target) if n.op == "call_module" else None   # noqa: E731
    members = [n for n in graph.nodes if _writer(mod(n)) or _combiner(n, modules)]
    parent = {n: n for n in members}

    def root(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n
    for n in members:
        if _combiner(n, modules):
            for a in n.all_input_nodes:
                if a in parent:
                    parent[root(a)] = root(n)
    groups: dict = {}
    for n in members:
        groups.setdefault(root(n), []).append(n)
    streams = []
    for nodes in groups.values():
        inside = set(nodes)
        writers = [n for n in nodes if _writer(mod(n))]
        readers, ok = [], bool(writers) and not any(w.target in shared for w in writers)
        for n in nodes:
            if _combiner(n, modules) and not all(a in inside for a in n.all_input_nodes):
                ok = False   # something other than a writer or a sum enters the stream
            for u in n.users:
                if u in inside:
                    continue
                if _reader(mod(u)) and u.args[:1] == (n,) and len(u.all_input_nodes) == 1 and u.target not in shared:
                    readers.append(u)
                else:
                    ok = False   # read by a nonlinearity, a reshape, the output, …
        if ok and readers:
            streams.append(Stream(tuple(w.target for w in writers), tuple(dict.fromkeys(r.target for r in readers))))
    return streams


@torch.no_grad()
def run_hooked(model: nn.Module, watched: dict, hook, calib: torch.Tensor, batch: int = 64) -> None:
    """Run `calib` through `model` with `hook(module, inputs, output, name)` on each watched module."""
    handles = [m.register_forward_hook(lambda m, i, y, n=n: hook(m, i, y, n)) for n, m in watched.items()]
    try:
        for x in calib.split(batch):
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()


def _input_highs(model: nn.Module, readers: list[str], calib: torch.Tensor) -> dict:
    """Per-channel absolute maximum of each reader's input on `calib`."""
    modules = dict(model.named_modules())
    highs: dict[str, torch.Tensor] = {}

    def hook(m, inputs, _y, name):
        x = inputs[0]
        h = x.abs().amax(dim=(0, *range(2, x.ndim))) if isinstance(m, nn.Conv2d) else x.abs().flatten(0, -2).amax(0)
        highs[name] = h if name not in highs else torch.maximum(highs[name], h)

    run_hooked(model, {r: modules[r] for r in readers}, hook, calib)
    return highs


def _column_range(m: nn.Module) -> torch.Tensor:
    w = m.weight
    return w.transpose(0, 1).reshape(w.shape[1], -1).abs().amax(1)


def stream_scales(stream: Stream, modules: dict, highs: dict, alpha: float) -> torch.Tensor:
    """s per channel (max 1); dead channels keep 1."""
    high = torch.stack([highs[r] for r in stream.readers]).amax(0)
    dense = [modules[r] for r in stream.readers if not depthwise(modules[r])]
    ok = high > 0
    if dense:
        w = torch.stack([_column_range(m) for m in dense]).amax(0)
        ok &= w > 0
        s = high.clamp(min=1e-12) ** alpha / w.clamp(min=1e-12) ** (1 - alpha)
    else:
        s = high.clone()
    s = s / s[ok].max() if ok.any() else s
    return torch.where(ok, s, torch.ones_like(s))


@torch.no_grad()
def rescale_stream(stream: Stream, modules: dict, s: torch.Tensor) -> None:
    """Stream channel c becomes x_c / s_c: writers' rows (weight, bias, BN prior) ÷ s, readers' inputs × s."""
    for name in stream.writers:
        m = modules[name]
        m.weight.div_(s.view(-1, *([1] * (m.weight.ndim - 1))))
        if m.bias is not None:
            m.bias.div_(s)
        if getattr(m, "bn_prior", None) is not None:
            m.bn_prior = (m.bn_prior[0] / s, m.bn_prior[1] / s)
    for name in stream.readers:
        m = modules[name]
        shape = (-1, 1, 1, 1) if depthwise(m) else (1, -1, *([1] * (m.weight.ndim - 2)))
        m.weight.mul_(s.view(shape))


@torch.no_grad()
def equalize_streams(model: nn.Module, calib: torch.Tensor, alpha: float = 0.5,
                     skip: set[tuple[str, str]] = frozenset()) -> dict:
    """Equalise every stream of `model` in place except the one-writer, one-reader streams in `skip`:
    (writer, reader) pairs CLE already balanced. Returns {"streams": [[writers], [readers]], "traced"}."""
    streams = find_streams(model)
    if streams is None:
        return {"streams": [], "traced": False}
    streams = [s for s in streams if (s.writers + s.readers) not in skip]
    modules = dict(model.named_modules())
    highs = _input_highs(model, sorted({r for s in streams for r in s.readers}), calib) if streams else {}
    for stream in streams:
        rescale_stream(stream, modules, stream_scales(stream, modules, highs, alpha))
    return {"streams": [[list(s.writers), list(s.readers)] for s in streams], "traced": True}
