"""Exact op lowerings applied before litert-torch conversion, chosen for XNNPACK's int8 kernels.

litert-torch writes nn.LayerNorm as MEAN, SUB, SQUARED_DIFFERENCE, MEAN, ADD, RSQRT, MUL. In a
full-integer model XNNPACK (ai-edge-litert 2.3) delegates no int8 SQUARED_DIFFERENCE and not that
SUB, so each LayerNorm falls back to the builtin int8 kernels, splits the XNNPACK graph and costs
~10 µs: measured on 25 LayerNorms of vit-small's shape, 0.243 ms int8 vs 0.020 ms FP32. Written
as d = x − mean(x); d·rsqrt(mean(d·d) + eps) the same maths costs 0.034 ms int8 (only ADD and
RSQRT stay outside XNNPACK). The FP32 graph gets the same form, so FP32 and INT8 are compared on
one graph, and FP32 parity (≤ 1e-4 vs torch) checks the rewrite.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class MulLayerNorm(nn.Module):
    """LayerNorm over the last axis in MEAN/SUB/MUL/RSQRT only (no SQUARED_DIFFERENCE)."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.dims = tuple(range(-len(ln.normalized_shape), 0))
        self.eps = ln.eps
        self.weight, self.bias = ln.weight, ln.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - x.mean(self.dims, keepdim=True)
        y = d * torch.rsqrt((d * d).mean(self.dims, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


def lower_for_tflite(model: nn.Module) -> tuple[nn.Module, dict]:
    """A copy of `model` with every nn.LayerNorm as MulLayerNorm and every parameter and buffer contiguous;
    returns (model, {lowering: count}).

    Contiguous because litert-torch's constant cache keys a constant on the storage address of
    `tensor.contiguous()`: for a non-contiguous parameter that is a temporary copy, freed at once, so the
    next same-shaped non-contiguous parameter can get its address and be served the first one's values.
    That was the intermittent FP32 parity failure (max abs 0.0295) of a split model whose two devices'
    (1, C, 1, S) position embeddings were transposed views: about half the conversions in one process
    swapped them (tests/test_tflite.py::test_non_contiguous_parameters_convert_exactly).
    """
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if not t.is_contiguous():
                t.data = t.data.contiguous()
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.LayerNorm:   # subclasses (timm's LayerNorm2d) permute first: left as they are
                setattr(parent, name, MulLayerNorm(child))
                count += 1
    return model, ({"layernorm→mean/mul/rsqrt": count} if count else {})
