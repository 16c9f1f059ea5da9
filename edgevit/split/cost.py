"""Batch-1 latency model of a SubViT: kernel launches plus multiply-accumulates, in MAC-equivalents.

Why: at edge batch sizes a small ViT is bound by per-kernel overhead, not arithmetic. Measured here
(vit-small, onnxruntime CPU, 1 thread, batch 1): an attention branch costs ~27 µs before any head and
~4.7 µs per 16-wide head; an MLP branch ~10 µs before any unit and ~0.08 µs per unit. A sub-model that
keeps all 24 branches at 20 % of the parameters still runs at 0.6x the original. So pruning must be able
to remove whole branches, and its budget must count them: cost = OP_MACS·kernels + MACs, with the kernel
counts of the exported graph after onnxruntime's fusions (LayerNorm, Gelu, MatMul+Add) and OP_MACS the
measured launch cost in MACs. The constants are fixed (not timed per run) so a seed gives the same plan.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

OP_MACS = 33_000      # one kernel launch ≈ this many fp32 MACs on one CPU core (batch 1)
ATTN_OPS = 18         # norm1, qkv, reshape/transpose/split, scale, q·kᵀ, softmax, attn·v, merge, proj, residual
MLP_OPS = 7           # norm2, fc1 (+bias), gelu, fc2 (+bias), residual
BASE_OPS = 25         # patch conv, flatten, cls concat, pos add, final norm, token select, classifier, shapes


@dataclass(frozen=True)
class VitDims:
    """The shape facts the parameter and cost formulas need."""
    dim: int
    head_dim: int
    tokens: int
    in_chans: int
    patch: int
    depth: int

    @classmethod
    def of(cls, vit: nn.Module) -> "VitDims":
        conv = vit.patch_embed.proj
        dim = vit.cls_token.shape[-1]
        return cls(dim, dim // vit.blocks[0].attn.num_heads, vit.pos_embed.shape[1], conv.in_channels,
                   conv.kernel_size[0], len(vit.blocks))


def attn_macs(d: VitDims, heads: torch.Tensor) -> torch.Tensor:
    """qkv + q·kᵀ + attn·v + proj for `heads` kept heads."""
    return d.tokens * heads * d.head_dim * (4 * d.dim + 2 * d.tokens)


def mlp_macs(d: VitDims, hidden: torch.Tensor) -> torch.Tensor:
    return 2 * d.tokens * d.dim * hidden


def base_cost(d: VitDims, num_outputs: int) -> int:
    return BASE_OPS * OP_MACS + (d.tokens - 1) * d.dim * d.in_chans * d.patch ** 2 + d.dim * num_outputs


def subvit_cost(d: VitDims, heads: torch.Tensor, hidden: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """Cost (MAC-equivalents) of a SubViT with per-block `heads`/`hidden` counts; any leading dims.
    A branch with no heads (units) is absent from the graph, so it costs nothing."""
    heads, hidden = torch.as_tensor(heads), torch.as_tensor(hidden)
    attn = torch.where(heads > 0, ATTN_OPS * OP_MACS + attn_macs(d, heads), 0)
    mlp = torch.where(hidden > 0, MLP_OPS * OP_MACS + mlp_macs(d, hidden), 0)
    return base_cost(d, num_outputs) + (attn + mlp).sum(-1)


def vit_cost(vit: nn.Module) -> int:
    """Cost of the unpruned model, the unit of the `--latency` budget."""
    d = VitDims.of(vit)
    heads = torch.tensor([b.attn.num_heads for b in vit.blocks])
    hidden = torch.tensor([b.mlp.fc1.out_features for b in vit.blocks])
    return int(subvit_cost(d, heads, hidden, vit.head.out_features))
