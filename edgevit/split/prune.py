"""Class-wise structured pruning: rank whole branches, heads and MLP units by importance for one class
subset, keep the best that fit a parameter budget and a latency-cost budget, slice into a dense `SubViT`.

Importance is the first-order Taylor score of Michel et al. (2019): a gate ξ=1 multiplies each head's
output, each hidden unit and each branch (a block's attention or MLP residual), and the score is
Σ_samples |∂L/∂ξ| of the sub-model's own task — the cross-entropy of the original model's *grouped*
prediction (the subset's classes + one "other" class) on real images, half from the subset's classes and
half from the rest. Per-sample gates give the per-sample gradients from one backward pass.

Selection is op-count aware (see cost.py: at batch 1 a branch's kernel launches cost more than its
arithmetic). For k = 1 … 2·depth, the k highest-scoring branches are kept; inside them, heads and units
are ranked globally by scores L2-normalised per layer (Molchanov et al. 2017) and one keep-ratio ρ is
bisected to the largest that fits both budgets. Each k is valued by Σ_branches score_b × (share of b's
unit importance kept), and the best k wins: few wide branches or many thin ones, whichever keeps more.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.split.cost import VitDims, subvit_cost
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


def importance_scores(vit: nn.Module, x: torch.Tensor, y: torch.Tensor, subset: torch.Tensor, num_classes: int,
                      batch_size: int = 64) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Per-block Taylor scores of every head and MLP hidden unit, and (depth, 2) scores of the
    attention / MLP branches, for `subset`'s task."""
    full = SubViT.from_vit(vit)
    full.requires_grad_(False)
    blocks = list(full.blocks)
    heads = [torch.zeros(b.attn.num_heads) for b in blocks]
    units = [torch.zeros(b.mlp.fc1.out_features) for b in blocks]
    branches = torch.zeros(len(blocks), 2)
    target = group_targets(y, subset, num_classes)
    for i in range(0, len(x), batch_size):
        xb, tb = x[i:i + batch_size], target[i:i + batch_size]
        gates = []
        for b in blocks:
            b.attn.gate = torch.ones(len(xb), b.attn.num_heads, requires_grad=True)
            b.mlp.gate = torch.ones(len(xb), b.mlp.fc1.out_features, requires_grad=True)
            b.gates = (torch.ones(len(xb), requires_grad=True), torch.ones(len(xb), requires_grad=True))
            gates += [b.attn.gate, b.mlp.gate, *b.gates]
        loss = F.cross_entropy(group_logits(full(xb), subset), tb, reduction="sum")
        grads = torch.autograd.grad(loss, gates)
        for j in range(len(blocks)):
            heads[j] += grads[4 * j].abs().sum(0)
            units[j] += grads[4 * j + 1].abs().sum(0)
            branches[j] += torch.stack([grads[4 * j + 2].abs().sum(), grads[4 * j + 3].abs().sum()])
    for b in blocks:
        b.attn.gate = b.mlp.gate = b.gates = None
    return heads, units, branches


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


def _ranked(scores: list[torch.Tensor], alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(block, index) of every item of the `alive` blocks, best first by per-layer-normalised score."""
    norm = torch.cat([s / (s.norm() + 1e-12) for s in scores])
    block = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    local = torch.cat([torch.arange(len(s)) for s in scores])
    order = norm.argsort(descending=True, stable=True)
    order = order[alive[block[order]]]
    return block[order], local[order]


def select_units(head_scores: list[torch.Tensor], unit_scores: list[torch.Tensor], branch_scores: torch.Tensor,
                 dims: VitDims, base: int, num_outputs: int, budget: int, cost_budget: float | None = None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """Kept head / unit indices per block under `budget` parameters and `cost_budget` (cost.py units);
    None when nothing fits. See the module docstring for the rule."""
    depth = len(head_scores)
    cost_budget = float("inf") if cost_budget is None else cost_budget
    order = branch_scores.reshape(-1).argsort(descending=True, stable=True)     # index = 2·block + kind
    head_tot = torch.stack([s.sum() for s in head_scores]) + 1e-12
    unit_tot = torch.stack([s.sum() for s in unit_scores]) + 1e-12
    h_all = torch.cat(head_scores)
    u_all = torch.cat(unit_scores)
    best, best_value = None, -1.0
    for k in range(1, 2 * depth + 1):
        alive = torch.zeros(2 * depth, dtype=torch.bool)
        alive[order[:k]] = True
        alive = alive.reshape(depth, 2)
        hb, hl = _ranked(head_scores, alive[:, 0])
        mb, ml = _ranked(unit_scores, alive[:, 1])

        def counts(rho: float):
            nh = max(int(len(hb) > 0), round(rho * len(hb)))
            nm = max(int(len(mb) > 0), round(rho * len(mb)))
            return torch.bincount(hb[:nh], minlength=depth), torch.bincount(mb[:nm], minlength=depth), nh, nm

        def fits(h, m) -> bool:
            return bool(subvit_params(dims.dim, dims.head_dim, h, m, base) <= budget
                        and subvit_cost(dims, h, m, num_outputs) <= cost_budget)

        if not fits(*counts(0.0)[:2]):
            continue
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(*counts(mid)[:2]) else (lo, mid)
        _, _, nh, nm = counts(lo)
        keep_h = [hl[:nh][hb[:nh] == i].sort().values for i in range(depth)]
        keep_m = [ml[:nm][mb[:nm] == i].sort().values for i in range(depth)]
        offs_h = torch.tensor([0, *map(len, head_scores)]).cumsum(0)
        offs_m = torch.tensor([0, *map(len, unit_scores)]).cumsum(0)
        kept_h = torch.stack([h_all[offs_h[i] + keep_h[i]].sum() for i in range(depth)]) / head_tot
        kept_m = torch.stack([u_all[offs_m[i] + keep_m[i]].sum() for i in range(depth)]) / unit_tot
        value = float((branch_scores[:, 0] * kept_h + branch_scores[:, 1] * kept_m).sum())
        if value > best_value:
            best, best_value = (keep_h, keep_m), value
    return best


def min_params(vit: nn.Module, num_outputs: int) -> int:
    """The smallest sub-model split builds: one hidden unit in one MLP branch, no attention."""
    d = VitDims.of(vit)
    return int(subvit_params(d.dim, d.head_dim, torch.tensor([0]), torch.tensor([1]), base_params(vit, num_outputs)))


def min_cost(vit: nn.Module, num_outputs: int) -> int:
    return int(subvit_cost(VitDims.of(vit), torch.tensor([0]), torch.tensor([1]), num_outputs))


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
                     num_classes: int, score_images: int = 512, seed: int = 0,
                     cost_budget: float | None = None) -> tuple[SubViT, dict]:
    """The pruned sub-model for `subset` within `budget` parameters and `cost_budget`, and its record."""
    gen = torch.Generator().manual_seed(seed)
    idx = scoring_sample(y, subset, score_images, gen)
    hs, us, bs = importance_scores(vit, x[idx], y[idx], subset, num_classes)
    dims = VitDims.of(vit)
    outputs = len(subset) + 1
    picked = select_units(hs, us, bs, dims, base_params(vit, outputs), outputs, budget, cost_budget)
    if picked is None:
        raise ValueError(f"no sub-model fits {budget} parameters and cost {cost_budget}")   # validate() prevents it
    keep_h, keep_m = picked
    hw, hb = subset_head(vit, subset)
    sub = SubViT.from_vit(vit, keep_h, keep_m, hw, hb)
    heads, hidden = [len(k) for k in keep_h], [len(k) for k in keep_m]
    info = {"heads": heads, "hidden": hidden, "score_images": len(idx),
            "params": sum(p.numel() for p in sub.parameters()),
            "branches": int(sum(h > 0 for h in heads) + sum(m > 0 for m in hidden)),
            "cost": int(subvit_cost(dims, torch.tensor(heads), torch.tensor(hidden), outputs)),
            "branch_scores": [[round(float(v), 4) for v in row] for row in bs]}
    return sub, info
