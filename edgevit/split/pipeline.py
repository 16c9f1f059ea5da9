"""ED-ViT end to end in memory: partition → assign → prune → distill → fuse. Artifacts are written by
`artifact.py`; this module only builds the `SplitModel` and the plan that describes it.

Data: the labelled training images are shuffled once with the seed; the first `train_images` are
used for importance scores and distillation, the next `fusion_images` measure the confusion matrix
(partition) and fit the fusion head, so the fusion head sees sub-model outputs on unseen images.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from edgevit.errors import UsageError
from edgevit.split import devices as dev
from edgevit.split.cost import vit_cost
from edgevit.split.distill import DistillRecipe, batched, distill_submodel, teacher_logits, train_fusion
from edgevit.split.model import SplitModel
from edgevit.split.partition import confusion_matrix, partition_classes, within_confusion
from edgevit.split.prune import full_params, min_cost, min_params, prune_for_subset
from edgevit.split.quantize import SplitQuant, quantize_split
from edgevit.split.subvit import check_vit


@dataclass
class SplitOptions:
    keep: float = 0.2              # largest sub-model's share of the original's parameters
    latency: float = 0.3           # fastest device's sub-model: share of the original's batch-1 cost (cost.py)
    train_images: int = 12000
    fusion_images: int = 2000
    score_images: int = 512        # images for the importance scores of each sub-model
    fusion_epochs: int = 60
    quant: SplitQuant | None = None   # --bits: quantise every sub-model after distillation
    distill: DistillRecipe = field(default_factory=DistillRecipe)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def validate(model: nn.Module, devices: list[dev.Device], options: SplitOptions,
             num_classes: int) -> tuple[list[int], list[float]]:
    """Every check that needs no training, run before any work; returns per-device parameter and cost budgets."""
    check_vit(model)
    if not 0 < options.keep <= 1:
        raise UsageError(f"--keep must be in (0, 1], got {options.keep}")
    if not 0 < options.latency <= 1:
        raise UsageError(f"--latency must be in (0, 1], got {options.latency}")
    if options.quant is not None:
        options.quant.spec()
    if len(devices) > num_classes:
        raise UsageError(f"{len(devices)} devices but only {num_classes} classes; each device needs at least one "
                         f"class, so use at most {num_classes} devices")
    outputs = -(-num_classes // len(devices)) + 1      # the largest subset's classes + "other"
    return (dev.plan_budgets(devices, full_params(model), options.keep, min_params(model, outputs)),
            dev.plan_costs(devices, vit_cost(model), options.latency, min_cost(model, outputs)))


def _run_key(sub: nn.Module, subset: list[int], recipe: DistillRecipe, options: SplitOptions) -> str:
    """Checkpoint key: a resumed run must have the same architecture, classes, recipe and data."""
    key = json.dumps([sub.config, subset, recipe.to_dict(), options.train_images, options.fusion_images,
                      options.seed], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def build_split(model: nn.Module, x: torch.Tensor, y: torch.Tensor, devices: list[dev.Device],
                options: SplitOptions, work_dir: Path | None = None, progress: bool = True) -> tuple[SplitModel, dict]:
    """The split model (sub-model i runs on device plan['devices'][i]) and the plan describing it."""
    num_classes = model.head.out_features
    budgets, costs = validate(model, devices, options, num_classes)
    need = options.train_images + options.fusion_images
    if len(x) < need:
        raise UsageError(f"split needs {need} labelled training images (--train-images + --fusion-images) "
                         f"but the data has {len(x)}; lower them or give more data")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(options.seed))
    tr, fu = perm[:options.train_images].sort().values, perm[options.train_images:need].sort().values
    xtr, ytr, xfu, yfu = x[tr], y[tr], x[fu], y[fu]
    model = model.eval()

    with tqdm(total=1, desc="teacher logits", disable=not progress or None, leave=False) as bar:
        t_train, t_fuse = teacher_logits(model, xtr), batched(model, xfu)
        bar.update()
    confusion = confusion_matrix(t_fuse, yfu, num_classes)
    subsets = partition_classes(confusion, len(devices))
    difficulty = within_confusion(confusion, subsets)
    where = dev.assign(difficulty, budgets)            # subset i → device where[i]
    # order sub-models by device so sub-model i is device i's
    order = sorted(range(len(subsets)), key=lambda i: where[i])
    subsets, difficulty = [subsets[i] for i in order], [difficulty[i] for i in order]

    subs, records = [], []
    for i, (d, subset, budget, cost) in enumerate(zip(devices, subsets, budgets, costs)):
        sub, info = prune_for_subset(model, torch.tensor(subset), budget, xtr, ytr, num_classes,
                                     options.score_images, options.seed + i, cost_budget=cost)
        recipe = DistillRecipe(**{**options.distill.to_dict(), "seed": options.distill.seed + i})
        ckpt = work_dir / f"{d.name}-{_run_key(sub, subset, recipe, options)}.pt" if work_dir is not None else None
        history = distill_submodel(sub, subset, xtr, ytr, t_train, recipe, ckpt, desc=f"distill {d.name}",
                                   progress=progress)
        subs.append(sub.eval())
        records.append({**info, "budget_params": budget, "budget_cost": int(cost),
                        "cost_share": round(info["cost"] / vit_cost(model), 4), "distill": history})

    feats = torch.cat([batched(s, xfu) for s in subs], dim=-1)
    fusion = train_fusion(feats, yfu, t_fuse, num_classes, epochs=options.fusion_epochs, seed=options.seed,
                          progress=progress)
    split = SplitModel(subs, subsets, fusion).eval()
    if options.quant is not None:
        with tqdm(total=1, desc=f"quantise {options.quant.bits}", disable=not progress or None, leave=False) as bar:
            split = quantize_split(split, options.quant, xtr, ytr, xfu, seed=options.seed)
            bar.update()
    plan = {"devices": [{**d.to_dict(), "classes": s, "difficulty": round(df, 4), **r}
                        for d, s, df, r in zip(devices, subsets, difficulty, records)],
            "confusion": confusion.tolist(), "options": options.to_dict(),
            "original_params": full_params(model), "original_cost": vit_cost(model)}
    return split, plan
