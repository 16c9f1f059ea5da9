"""The torch side of a parity check: the reference logits every exporter compares its runtime against.

Kept apart from runtimes/parity.py, which must import without torch (devices run it).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """`model`'s outputs (eval mode) on float32 NCHW `x`, in batches."""
    model.eval()
    x = np.ascontiguousarray(x, np.float32)
    return torch.cat([model(torch.from_numpy(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]).numpy()


@torch.no_grad()
def float64_logits(model: nn.Module, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """`model`'s outputs computed in float64 (a copy): the realisation float op order barely moves, against
    which the float32 reference's own sensitivity to op order is measured (runtimes.parity.with_reference_noise)."""
    m = copy.deepcopy(model).eval().double()
    x = np.ascontiguousarray(x, np.float64)
    return torch.cat([m(torch.from_numpy(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]).float().numpy()
