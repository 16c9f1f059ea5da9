"""Class-wise structured pruning: rank heads and MLP units by importance for one class subset, keep the
best that fit a parameter budget, and slice them into a dense `SubViT`.

Importance is the first-order Taylor score of Michel et al. (2019): a gate ξ=1 multiplies each head's
output and each hidden unit, and a unit's score is Σ_samples |∂L/∂ξ| of the sub-model's own task — the
cross-entropy of the original model's *grouped* prediction (the subset's classes + one "other" class)
on real images, half from the subset's classes and half from the rest. Per-sample gates give the
per-sample gradients from one backward pass. Scores are L2-normalised per layer (Molchanov et al. 2017)
so one global ranking covers all depths; one keep-ratio ρ for heads and units is bisected to the budget.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.split.subvit import SubViT


def group_logits(logits: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    """(B, K) logits → (B, |S|+1): the subset's logits and log Σ exp of the others (the "other" class)."""
    rest = torch.ones(logits.shape[-1], dtype=torch.bool)
    rest[subset] = False
    return torch.cat([logits[:, subset], logits[:, rest].logsumexp(-1, keepdim=True)], dim=-1)


def group_targets(y: torch.Tensor, subset: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class labels → sub-model labels: position in the subset, or |S| for "other"."""
    table = torch.full((num_classes,), len(subset), dtype=torch.long)
    table[subset] = torch.arange(len(subset))
    return table[y]


def importance_scores(vit: nn.Module, x: torch.Tensor, y: torch.Tensor, subset: torch.Tensor,
                      num_classes: int, batch_size: int = 64) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-block Taylor scores of every head and every MLP hidden unit for `subset`'s task."""
    full = SubViT.from_vit(vit)
    full.requires_grad_(False)
    blocks = list(full.blocks)
    heads = [torch.zeros(b.attn.num_heads) for b in blocks]
    units = [torch.zeros(b.mlp.fc1.out_features) for b in blocks]
    target = group_targets(y, subset, num_classes)
    for i in range(0, len(x), batch_size):
        xb, tb = x[i:i + batch_size], target[i:i + batch_size]
        gates = []
        for b in blocks:
            b.attn.gate = torch.ones(len(xb), b.attn.num_heads, requires_grad=True)
            b.mlp.gate = torch.ones(len(xb), b.mlp.fc1.out_features, requires_grad=True)
            gates += [b.attn.gate, b.mlp.gate]
        loss = F.cross_entropy(group_logits(full(xb), subset), tb, reduction="sum")
        grads = torch.autograd.grad(loss, gates)
        for j in range(len(blocks)):
            heads[j] += grads[2 * j].abs().sum(0)
            units[j] += grads[2 * j + 1].abs().sum(0)
    for b in blocks:
        b.attn.gate = b.mlp.gate = None
    return heads, units


def scoring_sample(y: torch.Tensor, subset: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of up to n images, half from the subset's classes and half from the others (seeded)."""
    inside = torch.isin(y, subset)
    pick = []
    for mask in (inside, ~inside):
        idx = mask.nonzero().squeeze(1)
        pick.append(idx[torch.randperm(len(idx), generator=gen)[: n // 2]])
    return torch.cat(pick).sort().values


def subvit_params(dim: int, head_dim: int, heads: torch.Tensor, hidden: torch.Tensor, base: int) -> torch.Tensor:
    """Exact parameter count of a SubViT with per-block `heads`/`hidden` counts (vectorised; any leading dims)."""
    attn = torch.where(heads > 0, 2 * dim + 4 * dim * head_dim * heads + 3 * head_dim * heads + dim, 0)
    mlp = torch.where(hidden > 0, 2 * dim + 2 * dim * hidden + hidden + dim, 0)
    return base + (attn + mlp).sum(-1)


def base_params(vit: nn.Module, num_outputs: int) -> int:
    """Parameters a SubViT has whatever is pruned: embeddings, final norm, classifier."""
    dim = vit.cls_token.shape[-1]
    conv = vit.patch_embed.proj
    return (sum(p.numel() for p in conv.parameters()) + vit.cls_token.numel() + vit.pos_embed.numel()
            + 2 * dim + (dim + 1) * num_outputs)


def select_units(head_scores: list[torch.Tensor], unit_scores: list[torch.Tensor], dim: int, head_dim: int,
                 base: int, budget: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Kept head / unit indices per block: the globally best under one ratio ρ, the largest ρ within budget.

    At least one head and one hidden unit are kept; the caller checks that this minimum fits.
    """
    def ranked(scores):
        norm = torch.cat([s / (s.norm() + 1e-12) for s in scores])
        block = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
        local = torch.cat([torch.arange(len(s)) for s in scores])
        order = norm.argsort(descending=True, stable=True)
        return block[order], local[order]

    (hb, hl), (mb, ml) = ranked(head_scores), ranked(unit_scores)
    depth = len(head_scores)

    def counts(rho: float):
        nh, nm = max(1, round(rho * len(hb))), max(1, round(rho * len(mb)))
        return (torch.bincount(hb[:nh], minlength=depth), torch.bincount(mb[:nm], minlength=depth), nh, nm)

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        h, m, _, _ = counts(mid)
        if subvit_params(dim, head_dim, h, m, base) <= budget:
            lo = mid
        else:
            hi = mid
    _, _, nh, nm = counts(lo)
    keep_h = [hl[:nh][hb[:nh] == i].sort().values for i in range(depth)]
    keep_m = [ml[:nm][mb[:nm] == i].sort().values for i in range(depth)]
    return keep_h, keep_m


def min_params(vit: nn.Module, num_outputs: int) -> int:
    """The smallest sub-model split builds: one head and one hidden unit in one block."""
    dim = vit.cls_token.shape[-1]
    head_dim = dim // vit.blocks[0].attn.num_heads
    return int(subvit_params(dim, head_dim, torch.tensor([1]), torch.tensor([1]), base_params(vit, num_outputs)))


def full_params(vit: nn.Module) -> int:
    return sum(p.numel() for p in vit.parameters())


@torch.no_grad()
def subset_head(vit: nn.Module, subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier rows for the subset plus an "other" row: the mean of the remaining rows, its bias
    raised by log(#others) so the start matches log Σ exp of the others when they agree."""
    w, b = vit.head.weight, vit.head.bias
    rest = torch.ones(w.shape[0], dtype=torch.bool)
    rest[subset] = False
    other_b = b[rest].mean() + math.log(int(rest.sum()))
    return torch.cat([w[subset], w[rest].mean(0, keepdim=True)]), torch.cat([b[subset], other_b.view(1)])


def prune_for_subset(vit: nn.Module, subset: torch.Tensor, budget: int, x: torch.Tensor, y: torch.Tensor,
                     num_classes: int, score_images: int = 512, seed: int = 0) -> tuple[SubViT, dict]:
    """The pruned sub-model for `subset` with at most `budget` parameters, and its importance record."""
    gen = torch.Generator().manual_seed(seed)
    idx = scoring_sample(y, subset, score_images, gen)
    hs, us = importance_scores(vit, x[idx], y[idx], subset, num_classes)
    dim = vit.cls_token.shape[-1]
    head_dim = dim // vit.blocks[0].attn.num_heads
    keep_h, keep_m = select_units(hs, us, dim, head_dim, base_params(vit, len(subset) + 1), budget)
    hw, hb = subset_head(vit, subset)
    sub = SubViT.from_vit(vit, keep_h, keep_m, hw, hb)
    info = {"heads": [len(k) for k in keep_h], "hidden": [len(k) for k in keep_m],
            "score_images": len(idx), "params": sum(p.numel() for p in sub.parameters())}
    return sub, info
