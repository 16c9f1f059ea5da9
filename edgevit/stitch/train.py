"""Joint training of anchors and stitching layers, one sampled configuration per step (SN-Net §3.3).

Sampling is uniform over configurations (v1) or FLOPs-grouped (v2: configurations bucketed by MACs,
a bucket drawn uniformly, then a configuration inside it) so that the many mid-size stitches do not
starve the anchors and the extremes. Seeded, resumable from `work_dir/last.pt`, bf16 autocast, on the
CPU or a CUDA device (`resolve_device`); the random stream stays on the CPU so a seed means the same
batches and configurations on every device.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from edgevit.models.train import _lr_at, augment
from edgevit.stitch.model import StitchedModel


class DeviceError(ValueError):
    """A training device that this torch build cannot use."""


def resolve_device(name: str) -> str:
    """`auto` → cuda when this torch sees a GPU, else cpu; `cpu` and `cuda[:N]` are checked, not assumed."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {name!r} is not a torch device; use auto, cpu or cuda[:N]") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise DeviceError(f"device {name!r}: stitch training runs on auto, cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {name!r}: this torch ({torch.__version__}) sees no CUDA GPU; use cpu or auto")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return str(dev)


@dataclass
class StitchRecipe:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-4                # fine-tuning rate: the anchors are already trained
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    label_smoothing: float = 0.1
    shift: int = 2
    hflip: bool = True
    sampling: str = "uniform"       # uniform (v1) | flops (v2)
    flops_groups: int = 8           # buckets of equal MACs width for flops sampling
    distill: float = 0.0            # weight of KL to the largest anchor's (frozen, pre-training) logits
    temperature: float = 1.0
    bf16: bool = True
    seed: int = 0


def flops_groups(macs: list[int], groups: int) -> list[list[int]]:
    """Config ids bucketed greedily by MACs: a new bucket starts once MACs exceed the bucket's first
    by (max − min) / groups (the reference's `flops_gap`, relative to this family's range)."""
    order = sorted(range(len(macs)), key=lambda i: macs[i])
    gap = (macs[order[-1]] - macs[order[0]]) / max(1, groups)
    buckets, start = [[order[0]]], macs[order[0]]
    for i in order[1:]:
        if macs[i] - start > gap:
            buckets.append([])
            start = macs[i]
        buckets[-1].append(i)
    return buckets


def sample_configs(n_steps: int, num_configs: int, gen: torch.Generator,
                   buckets: list[list[int]] | None = None) -> torch.Tensor:
    """Config id per step, vectorised: uniform, or a uniform bucket then uniform inside it."""
    if buckets is None:
        return torch.randint(0, num_configs, (n_steps,), generator=gen)
    sizes = torch.tensor([len(b) for b in buckets])
    table = torch.full((len(buckets), int(sizes.max())), -1, dtype=torch.long)
    for i, b in enumerate(buckets):
        table[i, :len(b)] = torch.tensor(b)
    bucket = torch.randint(0, len(buckets), (n_steps,), generator=gen)
    within = (torch.rand(n_steps, generator=gen) * sizes[bucket]).long()
    return table[bucket, within]


def train_stitched(model: StitchedModel, recipe: StitchRecipe, x: torch.Tensor, y: torch.Tensor,
                   work_dir: Path, macs: list[int] | None = None, progress: bool = True,
                   max_steps: int | None = None, device: str = "cpu") -> dict:
    """Train `model` in place on preprocessed (x, y) on `device` (a resolved name, see `resolve_device`);
    `macs` per config is needed for flops sampling. The model is back on the CPU when this returns."""
    from edgevit.errors import UsageError
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    buckets = flops_groups(macs, recipe.flops_groups) if recipe.sampling == "flops" else None
    model.to(device)
    x, y = x.to(device), y.to(device)
    teacher = None
    if recipe.distill > 0:
        teacher = copy.deepcopy(model.anchors[-1]).eval().requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n]
    no_decay = [p for n, p in params if not (p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    steps_per_epoch = math.ceil(len(x) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    warmup = int(recipe.warmup_frac * total)
    start_epoch, history = 0, []
    ckpt = work_dir / "last.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location="cpu")
        if state.get("recipe", asdict(recipe)) != asdict(recipe):
            raise UsageError(f"{work_dir} holds a stitch run with another recipe; delete it or pass another --work-dir")
        model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"]); start_epoch, history = state["epoch"], state["history"]
    counts = torch.zeros(model.num_configs, dtype=torch.long)
    t0 = time.time()
    step_budget = max_steps
    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        cfg_ids = sample_configs(steps_per_epoch, model.num_configs, gen, buckets)
        n_steps = steps_per_epoch if step_budget is None else min(steps_per_epoch, step_budget)
        bar = tqdm(range(n_steps), desc=f"stitch epoch {epoch + 1}/{recipe.epochs}", disable=not progress)
        for i in bar:
            idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size].to(device)
            xb = augment(x[idx], recipe.shift, recipe.hflip, gen)
            cid = int(cfg_ids[i])
            counts[cid] += 1
            for g in opt.param_groups:
                g["lr"] = _lr_at(epoch * steps_per_epoch + i, total, warmup, recipe.lr)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=recipe.bf16):
                logits = model.run(xb, model.configs[cid])
                loss = F.cross_entropy(logits, y[idx], label_smoothing=recipe.label_smoothing)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(xb)
                    t = recipe.temperature
                    kd = F.kl_div(F.log_softmax(logits.float() / t, -1), F.log_softmax(t_logits.float() / t, -1),
                                  log_target=True, reduction="batchmean") * t * t
                    loss = (1 - recipe.distill) * loss + recipe.distill * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            opt.step()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", cfg=cid)
        if step_budget is not None:
            step_budget -= n_steps
        history.append({"epoch": epoch + 1, "steps": n_steps, "elapsed_s": round(time.time() - t0, 1)})
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "epoch": epoch + 1, "history": history, "recipe": asdict(recipe)}, ckpt)
        if step_budget is not None and step_budget <= 0:
            break
    model.cpu().eval()
    return {"recipe": asdict(recipe), "device": device, "history": history, "train_images": len(x),
            "samples_per_config": counts.tolist(), "buckets": buckets}
