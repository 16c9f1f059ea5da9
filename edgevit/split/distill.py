"""Fine-tuning: each pruned sub-model is distilled from the original on its grouped task, then the fusion
MLP is fit on sub-model outputs of images the sub-models never trained on.

Sub-model loss: T²·KL(teacher ‖ student) at temperature T on the grouped distribution (the subset's
classes + "other" = the teacher's remaining probability mass), plus cross-entropy on the grouped hard
label. Teacher logits are computed once for each image and its mirror (the only augmentation), so all
N students share one teacher pass. Seeded; one checkpoint per epoch makes a run resumable.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edgevit.split.model import FusionHead
from edgevit.split.prune import group_logits, group_targets


@dataclass
class DistillRecipe:
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = 2.0
    hard_weight: float = 0.5       # weight of the hard-label CE next to the KD term
    bf16: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def batched(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def teacher_logits(teacher: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits for the images and their mirrors (float32, computed once)."""
    return batched(teacher, x), batched(teacher, x.flip(-1))


def _lr(step: int, total: int, base: float) -> float:
    warm = max(1, total // 20)
    return base * (step + 1) / warm if step < warm else 0.5 * base * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def distill_submodel(student: nn.Module, subset: list[int], x: torch.Tensor, y: torch.Tensor,
                     teacher: tuple[torch.Tensor, torch.Tensor], recipe: DistillRecipe,
                     ckpt: Path | None = None, desc: str = "distill", progress: bool = True) -> list[dict]:
    """Train `student` in place; resumes from `ckpt` (written after every epoch). Returns per-epoch loss."""
    num_classes = teacher[0].shape[1]
    s = torch.tensor(subset)
    target = group_targets(y, s, num_classes)
    t = recipe.temperature
    soft = [group_logits(tl / t, s).log_softmax(-1) for tl in teacher]      # grouped teacher log-probs at T
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(student.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = math.ceil(len(x) / recipe.batch_size)
    start, history = 0, []
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        student.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"]); start, history = state["epoch"], state["history"]
    for epoch in range(start, recipe.epochs):
        student.train()
        perm = torch.randperm(len(x), generator=gen)
        flips = torch.rand(len(x), generator=gen) < 0.5
        bar = tqdm(range(steps), desc=f"{desc} epoch {epoch + 1}/{recipe.epochs}", disable=not progress or None, leave=False)
        total = 0.0
        for i in bar:
            idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            flip = flips[idx][:, None]
            xb = torch.where(flip[:, :, None, None], x[idx].flip(-1), x[idx])
            tb = torch.where(flip, soft[1][idx], soft[0][idx])
            for g in opt.param_groups:
                g["lr"] = _lr(epoch * steps + i, recipe.epochs * steps, recipe.lr)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
                out = student(xb).float()
            kd = F.kl_div((out / t).log_softmax(-1), tb, log_target=True, reduction="batchmean") * t * t
            loss = kd + recipe.hard_weight * F.cross_entropy(out, target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            total += loss.item()
            if i % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({"epoch": epoch + 1, "loss": round(total / steps, 4)})
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": student.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "epoch": epoch + 1, "history": history}, tmp)
            tmp.replace(ckpt)
    return history.copy()


def train_fusion(features: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, num_classes: int,
                 hidden: int = 64, epochs: int = 60, batch_size: int = 256, lr: float = 3e-3,
                 seed: int = 0, progress: bool = True) -> FusionHead:
    """Fit the fusion MLP on concatenated sub-model outputs: CE on labels + KD (T=1) from the teacher."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = FusionHead(features.shape[1], num_classes, hidden)
    head.mean.copy_(features.mean(0))
    head.std.copy_(features.std(0).clamp(min=1e-3))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-3)
    steps = math.ceil(len(features) / batch_size)
    target = teacher.log_softmax(-1)
    for epoch in tqdm(range(epochs), desc="fusion", disable=not progress or None, leave=False):
        perm = torch.randperm(len(features), generator=gen)
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            for g in opt.param_groups:
                g["lr"] = _lr(epoch * steps + i, epochs * steps, lr)
            out = head(features[idx])
            loss = F.cross_entropy(out, y[idx]) + F.kl_div(out.log_softmax(-1), target[idx], log_target=True,
                                                           reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head.eval()
