"""timm architectures (`timm:<arch>`): built with pretrained=False, the user's weights loaded on top.

Nothing is downloaded: timm's pretrained configs only supply the preprocessing (mean/std/size).
This module is also the one place that makes timm importable beside this torch (see import_timm).
"""
from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import torch
from torch import nn

from edgevit.data.preprocess import Preprocess
from edgevit.errors import UsageError
from edgevit.models.imagenet import labels_for
from edgevit.models.meta import ModelMeta
from edgevit.models.weights import apply_weights, load_state_dict

INSTALL_HINT = "pip install edgevit[timm]"
_STUB_LIB = None          # keeps the torch.library registration alive for the process


def stub_torchvision_ops() -> None:
    """Declare `torchvision::nms`/`qnms` when torchvision's C++ extension cannot load.

    PyPI's torchvision wheel is built against another torch; its _C fails to load, and its import then
    dies registering fake kernels for ops that were never defined ('operator torchvision::nms does not
    exist'). Defining the two schemas first lets `import torchvision` (and so timm) succeed; the ops have
    no kernels, so calling them still fails loudly — classification backbones never do.
    """
    global _STUB_LIB
    missing = [op for op in ("nms", "qnms") if not _op_exists(op)]
    if not missing or _torchvision_extension_loads():
        return
    _STUB_LIB = _STUB_LIB or torch.library.Library("torchvision", "FRAGMENT")
    for op in missing:
        _STUB_LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def _torchvision_extension_loads() -> bool:
    """Load torchvision's own `_C` if it matches this torch (then it defines the real ops; no stub)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for lib in Path(next(iter(spec.submodule_search_locations))).glob("_C.*"):
        try:
            torch.ops.load_library(str(lib))
            return True
        except (OSError, RuntimeError):
            return False
    return False


def _op_exists(op: str) -> bool:
    try:
        getattr(torch.ops.torchvision, op)
        return True
    except (AttributeError, RuntimeError):
        return False


def import_timm():
    """`import timm`, with the torchvision stub in place; UsageError naming the extra when it is absent."""
    stub_torchvision_ops()
    try:
        import timm
    except ImportError as e:
        raise UsageError(f"timm:<arch> models need timm; run `{INSTALL_HINT}`") from e
    return timm


def _check_arch(timm, arch: str) -> None:
    if timm.is_model(arch):
        return
    names = timm.list_models()
    close = [n for n in names if n.startswith(arch)][:3] or difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
    hint = (f"did you mean {', '.join(close)}?" if close else
            "list names with `python -c \"import timm; print(timm.list_models('*vit*'))\"`")
    raise UsageError(f"unknown timm architecture {arch!r}; {hint}")


def _clean(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the `module.` prefix DataParallel/DDP checkpoints carry."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _num_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """Classes in the checkpoint's head (timm's pretrained_cfg names the classifier), None if unknown."""
    names = model.pretrained_cfg.get("classifier", "head")
    for name in [names] if isinstance(names, str) else names:
        w = state.get(f"{name}.weight")
        if w is not None and w.ndim >= 2:
            return int(w.shape[0])
    return None


def _preprocess(model: nn.Module) -> Preprocess:
    cfg = model.pretrained_cfg
    _, h, w = cfg.get("input_size", (3, 224, 224))
    if h != w:
        raise UsageError(f"{cfg.get('architecture')} expects a {h}x{w} input; edgevit handles square inputs only")
    return Preprocess(size=int(h), channels=3, mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                      std=tuple(cfg.get("std", (0.229, 0.224, 0.225))))


def load(arch: str, weights: str | None = None) -> tuple[nn.Module, ModelMeta]:
    """timm `arch` (pretrained=False) with the state dict in `weights`; without it, random init and a warning."""
    timm = import_timm()
    _check_arch(timm, arch)
    state = _clean(load_state_dict(weights)) if weights else None
    with torch.random.fork_rng(devices=[]):   # the same random model in every process (determinism)
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False)
    if state is not None:
        n = _num_classes(model, state)
        if n is not None and n != model.num_classes:
            model = timm.create_model(arch, pretrained=False, num_classes=n)
        apply_weights(model, state, weights)
    labels, note = labels_for(model.num_classes)
    description = (f"timm {arch}, weights {weights}" if weights else
                   f"timm {arch}, RANDOM weights (no --weights given): outputs are meaningless") + note
    family = str(model.pretrained_cfg.get("architecture", arch)).split("_")[0]
    return model.eval(), ModelMeta(f"timm:{arch}", _preprocess(model), labels, "timm", family, description)
