"""Distil a ViT teacher into the NPU-native conv student (AutoNeural's encoder swap).

Loss = (1−α)·CE(labels) + α·T²·KL(teacher ‖ student at temperature T) + β·feature MSE, where the
feature term matches the student's last 4×4 map (through a 1×1 conv adapter) to the teacher's 16
patch tokens and its pooled vector (through a Linear adapter) to the class token, both divided by
the teacher features' variance so β does not depend on their scale. The adapters are dropped after
training: the student alone is the encoder.

Cost on two CPU cores: the teacher runs once over the training set (and once over its mirror image,
the only augmentation, so every target is the teacher's real output for the image the student sees)
and its logits and tokens are cached in `work_dir`; the student then trains a few epochs in bf16
autocast, channels-last. The run is seeded and resumes from `work_dir/last.pt` after an interruption.

A last phase (fp32: bf16's rounding is as large as 8-bit noise) makes the student robust to integer
activations: each batch also runs with the noise of a per-tensor 8-bit quantiser added to every
conv input, and relRMS² between the clean and noisy encoder outputs joins the loss — AutoNeural's
robustness metric, optimised directly instead of hoped for. Longer beats harder: from the same
distilled student (vit-small teacher, 88.27 %), robust epochs × weight gave top-1 / W8A8 encoder relRMS
1×2000 86.89 % / 0.88 %, 2×2000 87.43 / 0.76, 2×4000 86.97 / 0.65, 3×4000 87.16 / 0.57, 4×4000
87.93 / 0.56 (the default: the long low-lr tail wins back the accuracy the noise first costs).
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edgevit.errors import UsageError
from edgevit.models.train import lr_at, evaluate
from edgevit.rewrite.student import ConvStudent, StudentConfig


@dataclass
class DistillRecipe:
    epochs: int = 4
    batch_size: int = 256
    lr: float = 4e-3
    weight_decay: float = 0.02
    warmup_epochs: float = 0.3
    temperature: float = 2.0
    alpha: float = 0.7              # weight of the logit distillation against the label loss
    beta: float = 1.0               # weight of the feature distillation
    label_smoothing: float = 0.1
    hflip: bool = True              # mirrored copies, with their own cached teacher outputs
    robust_epochs: int = 4          # then this many epochs of quantisation-noise consistency
    robust_weight: float = 4000.0   # weight of relRMS² between clean and noisy encoder outputs
    noise_bits: int = 8             # the noise is that of a per-tensor uniform quantiser of this many bits
    robust_lr_scale: float = 0.25   # phase-2 learning rate relative to `lr`
    train_samples: int = 0          # 0: the whole training split
    bf16: bool = True
    seed: int = 0

    def validate(self) -> "DistillRecipe":
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0 or self.robust_epochs < 0:
            raise UsageError("distillation needs epochs ≥ 1, robust epochs ≥ 0, batch size ≥ 1, lr > 0 "
                             "and temperature > 0")
        if not 2 <= self.noise_bits <= 16:
            raise UsageError(f"noise_bits must be 2-16, not {self.noise_bits}")
        if not 0 <= self.alpha <= 1 or self.beta < 0:
            raise UsageError(f"alpha must be in [0, 1] and beta ≥ 0 (got {self.alpha}, {self.beta})")
        return self


def teacher_tokens(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher's encoder output as (B, tokens, D): the bundled and timm ViTs' `forward_features`."""
    f = teacher.forward_features(x)
    if f.dim() != 3:
        raise UsageError("the teacher's forward_features must return (batch, tokens, dim); "
                         "--distill conv takes a ViT teacher (vit-tiny, vit-small, vit-base)")
    return f


def _fingerprint(teacher: nn.Module, x: torch.Tensor, recipe: DistillRecipe) -> str:
    h = hashlib.sha256()
    for k, v in sorted(teacher.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    h.update(x[:64].contiguous().numpy().tobytes())
    h.update(f"{len(x)}|{recipe.hflip}|{recipe.bf16}".encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def cache_teacher(teacher: nn.Module, x: torch.Tensor, recipe: DistillRecipe, path: Path,
                  batch: int = 512, progress: bool = True) -> dict:
    """Teacher logits (float32) and tokens (float16) for `x` and, with hflip, its mirror; reused
    from `path` when it was made by the same teacher on the same images."""
    key = _fingerprint(teacher, x, recipe)
    if path.exists():
        cached = torch.load(path, weights_only=True)
        if cached.get("key") == key:
            return cached
    teacher.eval()
    t0 = time.time()
    views = [False, True] if recipe.hflip else [False]
    logits, tokens = [], []
    total = math.ceil(len(x) / batch) * len(views)
    bar = tqdm(total=total, desc="teacher targets", disable=not progress or None)
    for flip in views:
        lo, tok = [], []
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            xb = xb.flip(-1) if flip else xb
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
                t = teacher_tokens(teacher, xb)
                lo.append(teacher.forward_head(t).float())
            tok.append(t.to(torch.float16))
            bar.update()
        logits.append(torch.cat(lo))
        tokens.append(torch.cat(tok))
    bar.close()
    cached = {"key": key, "logits": torch.stack(logits), "tokens": torch.stack(tokens),
              "seconds": torch.tensor(time.time() - t0)}
    tmp = path.with_suffix(".tmp")
    torch.save(cached, tmp)
    tmp.replace(path)
    return cached


class FeatureAdapter(nn.Module):
    """Maps the student's (B, C, h, w) map onto the teacher's tokens: 1×1 conv per grid position
    (pooled to the teacher's grid when sizes differ) and a Linear for the class token."""

    def __init__(self, student_dim: int, teacher_dim: int, grid: int, has_cls: bool):
        super().__init__()
        self.grid = grid
        self.patch = nn.Conv2d(student_dim, teacher_dim, 1)
        self.cls = nn.Linear(student_dim, teacher_dim) if has_cls else None

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if fmap.shape[-1] != self.grid:
            fmap = F.adaptive_avg_pool2d(fmap, self.grid)
        patches = self.patch(fmap).flatten(2).transpose(1, 2)               # (B, grid², D)
        cls = self.cls(fmap.mean((2, 3))) if self.cls is not None else None
        return patches, cls


def token_layout(n_tokens: int) -> tuple[int, bool]:
    """(grid side, has class token) of a ViT token sequence, or UsageError."""
    for has_cls in (True, False):
        g = math.isqrt(n_tokens - has_cls)
        if g * g == n_tokens - has_cls and g > 0:
            return g, has_cls
    raise UsageError(f"the teacher emits {n_tokens} tokens, not a square patch grid (+ class token); "
                     "feature distillation needs a ViT teacher")


class QuantNoise:
    """Forward pre-hooks adding, to the input of every Conv2d/Linear (the tensors an integer NPU
    quantises), uniform noise of one step of a per-tensor `bits`-bit quantiser over that tensor's
    batch range: the error round-to-nearest would add, without its zero gradient."""

    def __init__(self, model: nn.Module, bits: int, gen: torch.Generator):
        self.levels, self.gen, self.on = 2 ** bits - 1, gen, False
        self.handles = [m.register_forward_pre_hook(self._hook) for m in model.modules()
                        if isinstance(m, (nn.Conv2d, nn.Linear))]

    def _hook(self, _module, args):
        if not self.on:
            return None
        x = args[0]
        step = (x.detach().amax() - x.detach().amin()).clamp_min(1e-8) / self.levels
        u = torch.rand(x.shape, generator=self.gen, dtype=torch.float32).to(x.dtype) - 0.5
        return (x + u * step,)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def distill(teacher: nn.Module, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
            recipe: DistillRecipe, work_dir: Path, config: StudentConfig | None = None,
            progress: bool = True) -> tuple[ConvStudent, dict]:
    """Train a ConvStudent from `teacher` on preprocessed `train` (x, y); returns (student, record)."""
    recipe.validate()
    work_dir.mkdir(parents=True, exist_ok=True)
    teacher = teacher.eval()
    xtr, ytr = train
    if recipe.train_samples and recipe.train_samples < len(xtr):
        idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(recipe.seed))[:recipe.train_samples]
        xtr, ytr = xtr[idx.sort().values], ytr[idx.sort().values]
    with torch.no_grad():
        n_tokens, t_dim = teacher_tokens(teacher, xtr[:1]).shape[1:]
        n_classes = teacher(xtr[:1]).shape[1]
    grid, has_cls = token_layout(n_tokens)
    config = config or StudentConfig(in_chans=xtr.shape[1], num_classes=n_classes)
    ckpt = work_dir / "last.pt"
    state = torch.load(ckpt, weights_only=False, map_location="cpu") if ckpt.exists() else None
    if state is not None and (state.get("recipe") != asdict(recipe) or state.get("config") != config.to_dict()):
        raise UsageError(f"{work_dir} holds a distillation with another recipe; delete it or pass another --work-dir")
    cache = cache_teacher(teacher, xtr, recipe, work_dir / "teacher.pt", progress=progress)
    cache_s = float(cache.get("seconds", 0.0))        # when it was computed, not when it was reused
    t_logits, t_tokens = cache["logits"], cache["tokens"]
    t_var = float(t_tokens[:, :4096].float().var())

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    student = ConvStudent(config).to(memory_format=torch.channels_last)
    adapter = FeatureAdapter(config.feature_dim, t_dim, grid, has_cls)
    params = [*student.parameters(), *adapter.parameters()]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    steps = math.ceil(len(xtr) / recipe.batch_size)
    total, warmup = recipe.epochs * steps, int(recipe.warmup_epochs * steps)
    noise = QuantNoise(student, recipe.noise_bits, gen)
    start, history, spent = 0, [], 0.0
    if state is not None:
        student.load_state_dict(state["student"])
        adapter.load_state_dict(state["adapter"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start, history, spent = state["epoch"], state["history"], state.get("train_s", 0.0)
    T, t_start = recipe.temperature, time.time()
    n_epochs = recipe.epochs + recipe.robust_epochs
    for epoch in range(start, n_epochs):
        robust = epoch >= recipe.epochs
        student.train()
        adapter.train()
        perm = torch.randperm(len(xtr), generator=gen)
        flips = (torch.rand(len(xtr), generator=gen) < 0.5) if recipe.hflip else torch.zeros(len(xtr), dtype=torch.bool)
        bar = tqdm(range(steps), desc=f"{'robust' if robust else 'distil'} {epoch + 1}/{n_epochs}", disable=not progress or None)
        for i in bar:
            idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            view = flips[idx].long()
            fl = flips[idx][:, None, None, None]
            xb = torch.where(fl, xtr[idx].flip(-1), xtr[idx]).contiguous(memory_format=torch.channels_last)
            tl = t_logits[view, idx]
            tt = t_tokens[view, idx].float()
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * steps + i, total, warmup, recipe.lr) if not robust else \
                    lr_at((epoch - recipe.epochs) * steps + i, recipe.robust_epochs * steps, 0,
                           recipe.lr * recipe.robust_lr_scale)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16 and not robust):   # noise ≈ bf16 ulp
                fmap = student.forward_features(xb)
                logits = student.forward_head(fmap)
                patches, cls = adapter(fmap)
            logits, patches = logits.float(), patches.float()
            ce = F.cross_entropy(logits, ytr[idx], label_smoothing=recipe.label_smoothing)
            kd = F.kl_div(F.log_softmax(logits / T, 1), F.log_softmax(tl / T, 1), reduction="batchmean",
                          log_target=True) * T * T
            feat = F.mse_loss(patches, tt[:, int(has_cls):])
            if cls is not None:
                feat = (feat * grid * grid + F.mse_loss(cls.float(), tt[:, 0])) / (grid * grid + 1)
            loss = (1 - recipe.alpha) * ce + recipe.alpha * kd + recipe.beta * feat / t_var
            if robust:      # the same batch through the noisy network: its encoder output must not move
                noise.on = True
                noisy = student.forward_features(xb)
                noise.on = False
                rel2 = (noisy.float() - fmap.float()).pow(2).sum() / fmap.float().pow(2).sum().clamp_min(1e-12)
                loss = loss + recipe.robust_weight * rel2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 2.0)
            opt.step()
            if i % 20 == 0:
                bar.set_postfix(ce=f"{ce.item():.3f}", kd=f"{kd.item():.3f}", feat=f"{feat.item() / t_var:.3f}",
                                **({"noise_rel": f"{rel2.item() ** 0.5:.4f}"} if robust else {}))
        acc = evaluate(student, test[0], test[1])
        history.append({"epoch": epoch + 1, "phase": "robust" if robust else "distil", "test_top1": acc,
                        "elapsed_s": round(spent + time.time() - t_start, 1)})
        tqdm.write(f"epoch {epoch + 1}: student test top-1 {acc:.2f}%")
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"student": student.state_dict(), "adapter": adapter.state_dict(), "opt": opt.state_dict(),
                    "gen": gen.get_state(), "epoch": epoch + 1, "history": history, "recipe": asdict(recipe),
                    "config": config.to_dict(), "train_s": spent + time.time() - t_start}, tmp)
        tmp.replace(ckpt)
    noise.remove()
    student = student.to(memory_format=torch.contiguous_format).eval()
    record = {"recipe": asdict(recipe), "student_config": config.to_dict(), "history": history,
              "train_samples": len(xtr), "teacher_cache_s": round(cache_s, 1),
              "train_s": round(history[-1]["elapsed_s"], 1), "resumed_at_epoch": start,
              "test_top1": history[-1]["test_top1"],
              "teacher_tokens": int(n_tokens), "teacher_dim": int(t_dim), "grid": grid}
    return student, record
