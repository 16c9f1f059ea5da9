"""Joint training of anchors and stitching layers, one sampled configuration per step (SN-Net §3.3).

Sampling is uniform over configurations (v1) or FLOPs-grouped (v2: configurations bucketed by MACs,
a bucket drawn uniformly, then a configuration inside it) so that the many mid-size stitches do not
starve the anchors and the extremes. `log-flops` makes the buckets equal in log-MACs: a model family
grows geometrically (here 2.8 / 10.5 / 41 M MACs), and equal-width buckets gave the tiny↔small routes a
quarter of the steps and each of them a third of a small↔base route's; equal-ratio buckets give every
adjacent anchor pair the same share. Seeded, resumable from `work_dir/last.pt`, bf16 autocast, on the
CPU or a CUDA device (`resolve_device`); the random stream stays on the CPU so a seed means the same
batches and configurations on every device.

A short schedule (minutes, not SN-Net's 100 epochs) needs help, and every piece is a recipe option:
- warm-up (`warmup_epochs`): first train only the stitching layers on stitched configurations, anchors
  frozen (bit-identical), so the joint phase starts from stitches that already work;
- `anchor_lr_scale`: the anchors are trained, the stitching layers are not — the anchors get lr × scale;
- `anchor_distill`: an anchor step distils toward that anchor's frozen original logits, so the shared
  weights the stitched routes pull on do not drift;
- `anchor_prob`: each joint step trains an anchor with this probability (else a stitched configuration),
  instead of the anchors' 3-in-71 share under uniform sampling;
- `distill_teacher`: a stitched step distils from the family's largest anchor (`largest`, SN-Net's
  choice) or from the original of the largest anchor its route runs (`route`): on a 1-core budget the
  teacher's forward is a large share of a step, and for a tiny↔small route the small teacher costs a
  quarter of the base one.
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

from edgevit.models.train import lr_at, augment
from edgevit.stitch.model import StitchedModel


class DeviceError(ValueError):
    """A training device that this torch build cannot use."""


class RecipeError(ValueError):
    """A stitch training option out of its range."""


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


SAMPLINGS = ("uniform", "flops", "log-flops")


@dataclass
class StitchRecipe:
    epochs: int = 3                 # joint epochs (anchors + stitching layers)
    batch_size: int = 128
    lr: float = 2e-3                # the stitching layers' rate; the anchors get lr × anchor_lr_scale
    weight_decay: float = 0.05
    warmup_frac: float = 0.05       # linear lr warm-up, as a fraction of each phase's steps
    label_smoothing: float = 0.1
    shift: int = 2
    hflip: bool = True
    sampling: str = "log-flops"     # uniform (v1) | flops (v2) | log-flops (v2 on log-MACs)
    flops_groups: int = 8           # MACs buckets for flops sampling (equal width, or equal ratio for log-flops)
    distill: float = 1.0            # weight of KL to a frozen original anchor's logits on stitched steps
    distill_teacher: str = "largest"  # largest: the family's largest anchor | route: the route's largest
    temperature: float = 1.0
    bf16: bool = True
    seed: int = 0
    warmup_epochs: int = 1          # stitch-only epochs before the joint ones (anchors frozen)
    anchor_lr_scale: float = 0.1    # anchors' lr relative to `lr` in the joint phase (0: anchors frozen)
    anchor_distill: float = 1.0     # weight of KL to an anchor's own original logits on its steps
    anchor_prob: float = 0.25       # joint steps that train an anchor (0: the sampler's own share)

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise RecipeError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.distill_teacher not in ("largest", "route"):
            raise RecipeError(f"distill-teacher must be largest or route, got {self.distill_teacher!r}")
        for name, lo, hi in (("warmup_epochs", 0, None), ("anchor_lr_scale", 0.0, None), ("distill", 0.0, 1.0),
                             ("anchor_distill", 0.0, 1.0), ("anchor_prob", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo \
                    or (hi is not None and v > hi):
                span = f"in [{lo}, {hi}]" if hi is not None else f"≥ {lo}"
                raise RecipeError(f"{name.replace('_', '-')} must be {span}, got {v!r}")


# options added after the first checkpoints: their values in a checkpoint written before them
_LEGACY = {"warmup_epochs": 0, "anchor_lr_scale": 1.0, "anchor_distill": 0.0, "anchor_prob": 0.0,
           "distill_teacher": "largest"}


def flops_groups(macs: list[int], groups: int, log: bool = False) -> list[list[int]]:
    """Config ids bucketed greedily by MACs: a new bucket starts once MACs exceed the bucket's first
    by (max − min) / groups (the reference's `flops_gap`, relative to this family's range); with `log`,
    the same on log(MACs), i.e. buckets of equal MACs ratio."""
    if log:
        return flops_groups([math.log(max(m, 1)) for m in macs], groups)
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


def step_configs(n_steps: int, is_anchor: list[bool], recipe: StitchRecipe, phase: str, gen: torch.Generator,
                 macs: list[int] | None = None) -> tuple[torch.Tensor, list[list[int]] | None]:
    """(config id per step, the FLOPs buckets used). While the anchors are frozen (warm-up, or
    anchor_lr_scale 0) only stitched configurations are drawn; a joint phase with anchor_prob > 0 draws an
    anchor with that probability, else a stitched one; otherwise the sampler runs over every configuration
    (SN-Net's own scheme)."""
    anchors = [i for i, a in enumerate(is_anchor) if a]
    anchors_train = phase == "joint" and recipe.anchor_lr_scale > 0
    own_share = anchors_train and recipe.anchor_prob == 0
    pool = list(range(len(is_anchor))) if own_share else [i for i, a in enumerate(is_anchor) if not a]
    buckets = None
    if recipe.sampling in ("flops", "log-flops"):
        if macs is None:
            raise RecipeError(f"{recipe.sampling} sampling needs every configuration's MACs")
        buckets = flops_groups([macs[i] for i in pool], recipe.flops_groups, log=recipe.sampling == "log-flops")
    ids = torch.tensor(pool)[sample_configs(n_steps, len(pool), gen, buckets)]
    if anchors_train and recipe.anchor_prob > 0:
        pick = torch.rand(n_steps, generator=gen) < recipe.anchor_prob
        ids = torch.where(pick, torch.tensor(anchors)[torch.randint(0, len(anchors), (n_steps,), generator=gen)], ids)
    return ids, None if buckets is None else [[pool[i] for i in b] for b in buckets]


def param_groups(model: StitchedModel, recipe: StitchRecipe, phase: str) -> list[dict]:
    """AdamW groups: stitching layers at `lr`; the anchors (joint phase, scale > 0) at lr × anchor_lr_scale.
    Each group carries `lr_scale`, which the schedule multiplies; no decay on biases, norms and tokens."""
    def split(named):
        named = [(n, p) for n, p in named if p.requires_grad]
        decay = [p for n, p in named if p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n]
        keep = [p for n, p in named if not (p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n)]
        return decay, keep

    parts = [("stitch", 1.0, model.stitch_layers.named_parameters())]
    if phase == "joint" and recipe.anchor_lr_scale > 0:
        parts.append(("anchors", recipe.anchor_lr_scale, model.anchors.named_parameters()))
    groups = []
    for name, scale, named in parts:
        decay, keep = split(named)
        groups += [{"params": decay, "weight_decay": recipe.weight_decay, "lr": recipe.lr * scale,
                    "lr_scale": scale, "name": f"{name}.decay"},
                   {"params": keep, "weight_decay": 0.0, "lr": recipe.lr * scale, "lr_scale": scale,
                    "name": f"{name}.no_decay"}]
    return [g for g in groups if g["params"]]


def _phase(epoch: int, recipe: StitchRecipe) -> str:
    return "warmup" if epoch < recipe.warmup_epochs else "joint"


def _freeze_anchors(model: StitchedModel, frozen: bool, trainable: dict[str, bool]) -> None:
    """Frozen: no anchor weight takes a gradient (so autograd skips the front segment and the anchors'
    weight grads); unfrozen: back to each parameter's own flag."""
    for n, p in model.anchors.named_parameters():
        p.requires_grad_(trainable[n] and not frozen)


def trained_seconds(history: list[dict]) -> float:
    """Training seconds a checkpoint's history records. Each epoch logs the clock since training began.
    Checkpoints written before the clock carried over a resume restarted it at 0, so a drop marks a new
    run, and the runs' last readings add up."""
    total, last = 0.0, 0.0
    for h in history:
        if h.get("elapsed_s", 0.0) < last:
            total += last
        last = h.get("elapsed_s", 0.0)
    return round(total + last, 1)


def train_stitched(model: StitchedModel, recipe: StitchRecipe, x: torch.Tensor, y: torch.Tensor,
                   work_dir: Path, macs: list[int] | None = None, progress: bool = True,
                   max_steps: int | None = None, device: str = "cpu") -> dict:
    """Train `model` in place on preprocessed (x, y) on `device` (a resolved name, see `resolve_device`):
    `recipe.warmup_epochs` stitch-only epochs, then `recipe.epochs` joint ones, each phase with its own
    cosine schedule. `macs` per config drives flops sampling (counted at x's image size when not given).
    The model is back on the CPU."""
    from edgevit.errors import UsageError
    if macs is None and recipe.sampling != "uniform":
        from edgevit.stitch.evaluate import config_macs
        macs = config_macs(model, (1, *x.shape[1:]))
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model.to(device)
    x, y = x.to(device), y.to(device)
    is_anchor = [c.is_anchor for c in model.configs]
    n_anchors = sum(is_anchor)
    # frozen copies of the original anchors, taken before any checkpoint is loaded (teachers stay the originals)
    teachers: list[torch.nn.Module | None] = [None] * n_anchors
    for a in range(n_anchors):
        if recipe.anchor_distill > 0 or (recipe.distill > 0 and (a == n_anchors - 1 or recipe.distill_teacher == "route")):
            teachers[a] = copy.deepcopy(model.anchors[a]).eval().requires_grad_(False)
    trainable = {n: p.requires_grad for n, p in model.anchors.named_parameters()}
    steps_per_epoch = math.ceil(len(x) / recipe.batch_size)
    n_epochs = recipe.warmup_epochs + recipe.epochs
    start_epoch, history, saved_opt = 0, [], None
    ckpt = work_dir / "last.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location="cpu")
        if {**_LEGACY, **state.get("recipe", asdict(recipe))} != asdict(recipe):
            raise UsageError(f"{work_dir} holds a stitch run with another recipe; delete it or pass another --work-dir")
        model.load_state_dict(state["model"])
        gen.set_state(state["gen"]); start_epoch, history = state["epoch"], state["history"]
        saved_opt = (state.get("opt_phase", "joint"), state["opt"])
    counts = torch.zeros(model.num_configs, dtype=torch.long)
    t0 = time.time() - trained_seconds(history)      # a resumed run's clock goes on from the checkpoint's
    step_budget = max_steps
    opt, opt_phase, buckets = None, None, None
    try:
        for epoch in range(start_epoch, n_epochs):
            phase = _phase(epoch, recipe)
            first, total = (0, recipe.warmup_epochs) if phase == "warmup" else (recipe.warmup_epochs, recipe.epochs)
            if phase != opt_phase:
                _freeze_anchors(model, phase == "warmup" or recipe.anchor_lr_scale == 0, trainable)
                opt = torch.optim.AdamW(param_groups(model, recipe, phase), lr=recipe.lr)
                if saved_opt is not None and saved_opt[0] == phase:
                    opt.load_state_dict(saved_opt[1])
                opt_phase, saved_opt = phase, None
            params = [p for g in opt.param_groups for p in g["params"]]
            model.train()
            perm = torch.randperm(len(x), generator=gen)
            cfg_ids, buckets = step_configs(steps_per_epoch, is_anchor, recipe, phase, gen, macs)
            n_steps = steps_per_epoch if step_budget is None else min(steps_per_epoch, step_budget)
            phase_steps, warm = total * steps_per_epoch, int(recipe.warmup_frac * total * steps_per_epoch)
            bar = tqdm(range(n_steps), desc=f"stitch {phase} epoch {epoch - first + 1}/{total}", disable=not progress or None)
            for i in bar:
                idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size].to(device)
                xb = augment(x[idx], recipe.shift, recipe.hflip, gen)
                cid = int(cfg_ids[i])
                counts[cid] += 1
                lr = lr_at((epoch - first) * steps_per_epoch + i, phase_steps, warm, recipe.lr)
                for g in opt.param_groups:
                    g["lr"] = lr * g["lr_scale"]
                cfg = model.configs[cid]
                if cfg.is_anchor and recipe.anchor_distill > 0:
                    teacher, weight = teachers[cfg.segments[0].anchor], recipe.anchor_distill
                elif recipe.distill_teacher == "route" and not cfg.is_anchor:
                    teacher, weight = teachers[max(s.anchor for s in cfg.segments)], recipe.distill
                else:
                    teacher, weight = teachers[-1], recipe.distill
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=recipe.bf16):
                    logits = model.run(xb, cfg)
                    loss = F.cross_entropy(logits, y[idx], label_smoothing=recipe.label_smoothing)
                    if teacher is not None and weight > 0:
                        with torch.no_grad():
                            t_logits = teacher(xb)
                        t = recipe.temperature
                        kd = F.kl_div(F.log_softmax(logits.float() / t, -1), F.log_softmax(t_logits.float() / t, -1),
                                      log_target=True, reduction="batchmean") * t * t
                        loss = (1 - weight) * loss + weight * kd
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", cfg=cid)
            if step_budget is not None:
                step_budget -= n_steps
            history.append({"epoch": epoch + 1, "phase": phase, "steps": n_steps,
                            "elapsed_s": round(time.time() - t0, 1)})
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "opt_phase": phase,
                        "gen": gen.get_state(), "epoch": epoch + 1, "history": history, "recipe": asdict(recipe)}, ckpt)
            if step_budget is not None and step_budget <= 0:
                break
    finally:
        _freeze_anchors(model, False, trainable)
        model.cpu().eval()
    return {"recipe": asdict(recipe), "device": device, "history": history, "train_images": len(x),
            "samples_per_config": counts.tolist(), "buckets": buckets}
