"""Least-squares initialisation of the stitching layers on real activations (SN-Net §3.2).

For a layer serving positions (j, k) from anchor a to anchor b, X = tokens leaving block j of a and
Y = tokens entering block k of b on the calibration images; [W | b] = lstsq([X, 1], Y). A layer shared
by several positions is fitted once on all of them stacked — the least-squares optimum for the shared
map — instead of averaging per-position solutions as the reference code does.
"""
from __future__ import annotations

import torch

from edgevit.stitch.anchors import block_inputs
from edgevit.stitch.model import StitchedModel
from edgevit.stitch.space import layer_positions


def fit_affine(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) minimising ‖x·Wᵀ + b − y‖² over the rows of x (…, d_in) and y (…, d_out), in float64."""
    x = x.reshape(-1, x.shape[-1]).double()
    y = y.reshape(-1, y.shape[-1]).double()
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    sol = torch.linalg.lstsq(x1, y, driver="gelsd").solution          # (d_in + 1, d_out)
    return sol[:-1].T.float().contiguous(), sol[-1].float().contiguous()


@torch.no_grad()
def least_squares_init(model: StitchedModel, x_calib: torch.Tensor) -> dict[str, float]:
    """Initialise every stitching layer of `model` in place; returns the fit's relative error per layer."""
    was_training = model.training
    model.eval()
    feats = [block_inputs(a, x_calib) for a in model.anchors]     # each (depth + 1, B, N, D)
    positions = layer_positions(model.depth, model.kernel, model.stride)
    errors = {}
    for key, layers in model.stitch_layers.items():
        front, end = (int(v) for v in key.split("to"))
        for lid, pairs in positions.items():
            j = torch.tensor([p[0] for p in pairs])
            k = torch.tensor([p[1] for p in pairs])
            x, y = feats[front][j + 1], feats[end][k]              # tokens out of block j, into block k
            w, b = fit_affine(x, y)
            layers[lid].set_affine(w, b)
            resid = (x.reshape(-1, x.shape[-1]) @ w.T + b - y.reshape(-1, y.shape[-1])).norm()
            errors[f"{key}.{lid}"] = (resid / y.norm()).item()
    model.train(was_training)
    return errors
