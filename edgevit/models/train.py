"""Training for the bundled Fashion-MNIST family: seeded, resumable, bf16 autocast on CPU.

The recipe is stored next to every checkpoint so `edgevit train` reproduces it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edgevit.data.preprocess import Preprocess
from edgevit.errors import UsageError


@dataclass
class TrainRecipe:
    epochs: int = 15
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    shift: int = 2                 # random translation in pixels (pad + crop)
    hflip: bool = True
    bf16: bool = True              # autocast matmuls to bfloat16 (≈2× on AVX512-BF16 CPUs)
    seed: int = 0


def augment(x: torch.Tensor, shift: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random translation and horizontal flip, vectorised over the batch."""
    b, _, h, w = x.shape
    if shift:
        padded = F.pad(x, (shift,) * 4)
        dev = x.device
        oy = torch.randint(0, 2 * shift + 1, (b,), generator=gen).to(dev)
        ox = torch.randint(0, 2 * shift + 1, (b,), generator=gen).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[torch.arange(b, device=dev)[:, None, None, None],
                   torch.arange(x.shape[1], device=dev)[None, :, None, None], rows, cols]
    if hflip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             progress: bool = False, desc: str = "eval") -> float:
    """Top-1 accuracy (%) of `model` on preprocessed tensors."""
    model.eval()
    correct = 0
    dev = next(model.parameters()).device
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress or None, leave=False):
        pred = model(x[i:i + batch_size].to(dev)).argmax(-1).cpu()
        correct += (pred == y[i:i + batch_size]).sum().item()
    return 100.0 * correct / len(x)


def train(model: torch.nn.Module, preprocess: Preprocess, recipe: TrainRecipe, train_data, test_data,
          work_dir: Path, progress: bool = True, device: str = "cpu") -> dict:
    """Train `model` in place on `device`; resume from `work_dir/last.pt` if present. Returns metrics.

    The random stream (shuffling, augmentation) is drawn on the CPU, so a seed means the same
    batches on every device; numerics still differ slightly between CPU and CUDA bf16.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model.to(device)
    xtr, ytr = preprocess(train_data[0]).to(device), torch.as_tensor(train_data[1]).to(device)
    xte, yte = preprocess(test_data[0]), torch.as_tensor(test_data[1])
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    steps_per_epoch = math.ceil(len(xtr) / recipe.batch_size)
    total, warmup = recipe.epochs * steps_per_epoch, int(recipe.warmup_epochs * steps_per_epoch)
    start_epoch, history = 0, []
    ckpt = work_dir / "last.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location="cpu")
        if state.get("recipe") != asdict(recipe):
            raise UsageError(f"{work_dir} holds a run with another recipe; delete it or pass another --work-dir")
        model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"]); start_epoch, history = state["epoch"], state["history"]
    t0 = time.time()
    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress or None)
        for i in bar:
            idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size].to(device)
            xb = augment(xtr[idx], recipe.shift, recipe.hflip, gen)
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * steps_per_epoch + i, total, warmup, recipe.lr)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=recipe.bf16):
                loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        acc = evaluate(model, xte, yte)
        history.append({"epoch": epoch + 1, "test_top1": acc, "elapsed_s": round(time.time() - t0, 1)})
        tqdm.write(f"epoch {epoch + 1}: test top-1 {acc:.2f}%")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "epoch": epoch + 1, "history": history, "recipe": asdict(recipe)}, ckpt)
    model.cpu()
    return {"test_top1": evaluate(model, xte, yte), "history": history, "recipe": asdict(recipe), "device": device}


def save_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)) + "\n")
