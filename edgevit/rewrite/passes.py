"""The rewrite passes: module surgery on the torch model, one function per pass.

Why module surgery and not torch.fx: the NPU layout change (B, N, C) → (B, C, 1, S) is a
re-implementation of every block's forward, not a local graph edit; timm models carry shape asserts
and flag-driven branches that fx cannot trace without per-family leaf lists; and swapping modules
keeps parameter names readable, so later stages (quant, split, export) still see Conv/LayerNorm
modules. Data flow that surgery needs (which Conv feeds which BatchNorm, which Linear sees 2-D
input) is read from forward hooks on one real batch, and every pass is checked for equivalence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from edgevit.rewrite.modules import GeluOp, LinearAsConv, NpuAttention, NpuBlock, NpuViT, SigmoidGelu
from edgevit.rewrite.vit import is_vit, to_npu_vit


@dataclass(frozen=True)
class Pass:
    name: str
    summary: str
    exact: bool              # keeps FP32 outputs equal (checked ≤ 1e-4); False: reported, not enforced
    run: Callable[[nn.Module, "PassContext"], tuple[nn.Module, dict]]


@dataclass
class PassContext:
    sample: torch.Tensor                 # a real batch, used to read data flow through hooks
    input_shape: tuple[int, ...]
    gelu_form: str = "op"                # op | tanh | sigmoid | keep
    split_heads: bool = True


def _trace_modules(model: nn.Module, x: torch.Tensor, types: tuple[type, ...]):
    """Run `x` once; return [(name, module, input tensor, output tensor)] for modules of `types`."""
    records, handles = [], []
    for name, m in model.named_modules():
        if isinstance(m, types):
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: records.append((name, mod, inp[0] if inp else None, out))))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return records


def fold_bn(model: nn.Module, ctx: PassContext):
    """Fold every BatchNorm2d that reads a Conv2d's output into that conv's weights and bias."""
    recs = _trace_modules(model, ctx.sample, (nn.Conv2d, nn.BatchNorm2d))
    conv_of = {id(out): (name, m) for name, m, _, out in recs if isinstance(m, nn.Conv2d)}
    folded = 0
    for name, bn, inp, _ in recs:
        if not isinstance(bn, nn.BatchNorm2d) or id(inp) not in conv_of or not bn.track_running_stats:
            continue
        _, conv = conv_of[id(inp)]
        replacement = _bn_replacement(bn)
        if replacement is None:
            continue
        with torch.no_grad():
            inv = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(inv.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - bn.running_mean) * inv + beta)
        model.set_submodule(name, replacement)
        folded += 1
    return model, {"folded": folded}


def _bn_replacement(bn: nn.BatchNorm2d) -> nn.Module | None:
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if hasattr(bn, "act") and hasattr(bn, "drop"):          # timm BatchNormAct2d: BN, then drop, then act
        return nn.Sequential(bn.drop, bn.act)
    return None


def conv_layout(model: nn.Module, ctx: PassContext):
    """ViT → (B, C, 1, S) encoder of 1×1 convs with channel LayerNorm; other Linears on (B, C) → 1×1 conv."""
    info = {}
    if is_vit(model):
        model = to_npu_vit(model)
        info["vit"] = "converted to (B, C, 1, S)"
    recs = _trace_modules(model, ctx.sample, (nn.Linear,))
    linears = [(name, m) for name, m, inp, _ in recs if inp is not None and inp.dim() == 2]
    for name, m in linears:
        model.set_submodule(name, LinearAsConv(m))
    info["linear_to_conv"] = len(linears)
    return model, info


def split_heads(model: nn.Module, ctx: PassContext):
    """One matmul chain per attention head instead of a head-batched matmul."""
    n = 0
    for m in model.modules():
        if isinstance(m, NpuAttention):
            m.split_heads, n = True, n + 1
    return model, {"attention_blocks": n}


def fold_constants(model: nn.Module, ctx: PassContext):
    """Fold attention scale into q weights, LayerScale into proj/fc2, class token + its position
    embedding into one constant; drop Dropout modules."""
    info = {"scale": 0, "layer_scale": 0, "dropout": 0, "cls_pos": 0}
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NpuAttention) and m.scale != 1.0:
                c = m.proj.in_channels
                m.qkv.weight[:c] *= m.scale
                if m.qkv.bias is not None:
                    m.qkv.bias[:c] *= m.scale
                m.scale, info["scale"] = 1.0, info["scale"] + 1
            if isinstance(m, NpuBlock):
                for attr, branch, conv_name in (("ls1", m.attn, "proj"), ("ls2", m.mlp, "fc2")):
                    gamma = getattr(m, attr)
                    if gamma is not None and branch is not None:   # a pruned (None) branch has no gamma to fold
                        conv = getattr(branch, conv_name)
                        conv.weight.mul_(gamma.reshape(-1, 1, 1, 1))
                        if conv.bias is not None:
                            conv.bias.mul_(gamma.reshape(-1))
                        setattr(m, attr, None)
                        info["layer_scale"] += 1
            if isinstance(m, NpuViT) and m.cls is not None and m.pos_cls is not None:
                m.cls = nn.Parameter(m.cls + m.pos_cls)
                m.pos_cls, info["cls_pos"] = None, 1
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Dropout) and name:
            model.set_submodule(name, nn.Identity())
            info["dropout"] += 1
    return model, info


def replace_gelu(model: nn.Module, ctx: PassContext):
    """Exact erf-GELU → the target's form: one Gelu op (exact), tanh or sigmoid approximation."""
    make = {"op": GeluOp, "tanh": lambda: nn.GELU(approximate="tanh"), "sigmoid": SigmoidGelu}.get(ctx.gelu_form)
    if make is None:
        return model, {"replaced": 0, "form": ctx.gelu_form}
    names = [n for n, m in model.named_modules() if isinstance(m, nn.GELU) and m.approximate == "none"]
    for n in names:
        model.set_submodule(n, make())
    return model, {"replaced": len(names), "form": ctx.gelu_form}


def static_shape(model: nn.Module, ctx: PassContext):
    """Fix the input shape (batch included) so every exported dimension is a constant."""
    model.edgevit_static_shape = tuple(ctx.input_shape)
    return model, {"input_shape": list(ctx.input_shape)}


PASSES = [
    Pass("fold-bn", "fold BatchNorm into the preceding Conv", True, fold_bn),
    Pass("conv-layout", "Linear → 1×1 Conv2d, ViT in (B,C,1,S) layout, LayerNorm over channels, rank ≤ 4", True,
         conv_layout),
    Pass("split-heads", "attention split per head (rank-4 per-head matmuls)", True, split_heads),
    Pass("fold-constants", "fold attention scale, LayerScale, class-token position; drop Dropout", True,
         fold_constants),
    Pass("static-shape", "static input shape (batch included) for export", True, static_shape),
    # last: outputs are checked against the original model, so an exact pass after this non-exact one
    # would be charged with the GELU approximation's change
    Pass("gelu", "erf-GELU → the target's GELU form (one Gelu op is exact; tanh/sigmoid change outputs)", False,
         replace_gelu),
]
PASS_NAMES = [p.name for p in PASSES]
