"""Reproduce the bundled checkpoints: `edgevit train vit-small` (or all of them with `--all`)."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from edgevit.data.fashion_mnist import load_fashion_mnist
from edgevit.models import bundled
from edgevit.models.train import TrainRecipe, save_json, train

# The recipes the committed checkpoints were trained with (epochs sized for a 2-core machine).
RECIPES = {
    "vit-tiny": TrainRecipe(epochs=20, lr=2e-3),
    "vit-small": TrainRecipe(epochs=20, lr=2e-3),
    "vit-base": TrainRecipe(epochs=40, lr=1.5e-3),
    "mobilenet-mini": TrainRecipe(epochs=10, lr=3e-3, weight_decay=0.01),
}


CHECK_SUBSET = 2000  # the first N test images: a fixed subset tests re-evaluate quickly


def subset_check(model: torch.nn.Module) -> dict:
    """Top-1 on the first CHECK_SUBSET test images, recorded so tests can verify the checkpoint."""
    from edgevit.models.train import evaluate
    images, labels = load_fashion_mnist("test")
    x = bundled.FASHION_MNIST_PREPROCESS(images[:CHECK_SUBSET])
    return {"first_n": CHECK_SUBSET, "top1": evaluate(model, x, torch.as_tensor(labels[:CHECK_SUBSET]))}


def train_bundled(name: str, out_dir: Path | None = None, work_dir: Path | None = None,
                  epochs: int | None = None, seed: int | None = None, progress: bool = True,
                  device: str = "cpu") -> dict:
    """Train bundled model `name` from scratch (resuming from `work_dir`); write weights + record."""
    out_dir = Path(out_dir or bundled.WEIGHTS_DIR)
    work_dir = Path(work_dir or Path(".edgevit-train") / name)
    recipe = RECIPES[name]
    if epochs is not None:
        recipe = replace(recipe, epochs=epochs)
    if seed is not None:
        recipe = replace(recipe, seed=seed)
    torch.manual_seed(recipe.seed)
    model = bundled.BUNDLED[name]["factory"]()
    t0 = time.time()
    metrics = train(model, bundled.FASHION_MNIST_PREPROCESS, recipe, load_fashion_mnist("train"),
                    load_fashion_mnist("test"), work_dir, progress=progress, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = out_dir / f".{name}.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(out_dir / f"{name}.safetensors")
    record = {"model": name,
              "check_subset": subset_check(model), "description": bundled.BUNDLED[name]["description"],
              "params": sum(p.numel() for p in model.parameters()),
              "test_top1": round(metrics["test_top1"], 2), "recipe": metrics["recipe"],
              "history": metrics["history"], "train_wall_s": round(time.time() - t0, 1),
              "torch": torch.__version__, "device": _device_name(device), "command": f"edgevit train {name} --seed {recipe.seed}"}
    save_json(out_dir / f"{name}.json", record)
    return record


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device
