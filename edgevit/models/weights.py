"""User state dicts: read without unpickling code, applied strictly with errors that name the keys."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgevit.errors import UsageError


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
