"""Class partition: N balanced subsets that keep mutually confused classes together.

Rule. Sizes are balanced (they differ by at most one). Among such partitions we maximise the confusion
kept *inside* subsets, Σ_g Σ_{i<j∈g} (C_ij + C_ji), C the original model's soft confusion on real data:
greedy seeding (each subset starts from the most-confused unplaced class and takes the classes most
confused with it), then the best class swap between two subsets, repeated while it gains (swaps keep
the sizes, so balance always holds; the objective strictly grows, so it ends).
Why: a sub-model sees its own classes individually and lumps the rest into "other". If two classes
the model confuses (shirt / T-shirt) sat on different devices, both sub-models would claim the image
and the fusion head would arbitrate between two weak opinions. Kept together, one sub-model is
distilled specifically to separate them, and the others can all answer "other".
"""
from __future__ import annotations

import torch


@torch.no_grad()
def confusion_matrix(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Row-normalised soft confusion: mean predicted probability of class j for images of class i."""
    probs = logits.softmax(-1)
    sums = torch.zeros(num_classes, num_classes).index_add_(0, y, probs)
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).unsqueeze(1)
    return sums / counts


def _affinity(confusion: torch.Tensor) -> torch.Tensor:
    aff = (confusion + confusion.T).double()
    aff.fill_diagonal_(0)
    return aff


def partition_classes(confusion: torch.Tensor, n: int) -> list[list[int]]:
    """Split classes 0..K-1 into n balanced subsets grouping confused classes (see module docstring)."""
    k = confusion.shape[0]
    if not 1 <= n <= k:
        raise ValueError(f"cannot split {k} classes into {n} subsets")
    aff = _affinity(confusion)
    capacity = [k // n + (1 if i < k % n else 0) for i in range(n)]
    group = torch.full((k,), -1, dtype=torch.long)
    for g, cap in enumerate(capacity):
        free = (group < 0).nonzero().squeeze(1)
        seed = free[aff[free][:, free].sum(1).argmax()]
        others = free[free != seed]
        pick = others[aff[seed, others].argsort(descending=True, stable=True)[:cap - 1]]
        group[torch.cat([seed.view(1), pick])] = g
    while True:
        m = aff @ torch.nn.functional.one_hot(group, n).double()      # (K, n): affinity of class to group
        own = m.gather(1, group[:, None])                            # (K, 1)
        cross = m[:, group]                                          # [a, b] = M[a, g(b)]
        gain = cross - own + cross.T - own.T - 2 * aff               # swap a <-> b
        gain[group[:, None] == group[None, :]] = 0
        a, b = divmod(int(gain.argmax()), k)
        if gain[a, b] <= 1e-12:
            break
        group[a], group[b] = group[b].clone(), group[a].clone()
    return [sorted((group == g).nonzero().squeeze(1).tolist()) for g in range(n)]


def within_confusion(confusion: torch.Tensor, groups: list[list[int]]) -> list[float]:
    """Confusion mass kept inside each subset: how hard each sub-model's job is (used for assignment)."""
    aff = _affinity(confusion)
    return [float(aff[g][:, g].sum()) / 2 for g in groups]
