"""Empirical bias correction (Nagel et al. 2019 §4.2; AIMET's "empirical" mode).

Quantised weights (and activations) shift the mean of a layer's output per channel: E[ỹ] ≠ E[y], and
the shift accumulates through the network. Correcting each layer's bias by E[y] − E[ỹ], measured on
calibration data *in model order* (layer i is corrected before layer i+1 is measured, so later layers
see corrected inputs), removes the shift including what upstream layers added.

One float pass records every layer's per-channel output mean; one quantised pass corrects each layer's
bias inside a forward hook and hands the corrected output on, so the whole correction costs two forward
passes over the calibration set instead of one per layer. The calibration set goes through as one batch
(that is what makes the in-pass correction sequential), so keep it to a few hundred images.
"""
from __future__ import annotations

import torch
from torch import nn

from quant.modules import quantized_layers


def _channel_mean(y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-output-channel mean: NCHW conv outputs over (N, H, W), linear outputs over all leading dims."""
    if kind == "conv":
        return y.double().mean(dim=(0, *range(2, y.ndim)))
    return y.double().reshape(-1, y.shape[-1]).mean(0)


def _shape(delta: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "conv":
        return delta.view(1, -1, *([1] * (y.ndim - 2)))
    return delta


@torch.no_grad()
def correct_bias(float_model: nn.Module, qmodel: nn.Module, calib: torch.Tensor) -> dict:
    """Shift the bias of every quantised Linear/Conv2d in `qmodel` (in place) so its per-channel output mean
    on `calib` equals `float_model`'s (same layer names). Layers without a bias are skipped and listed.

    Returns {"corrected": n, "skipped_no_bias": [...], "mean_abs_shift": float}."""
    layers = [(n, m) for n, m in quantized_layers(qmodel) if m.quant_kind in ("linear", "conv")]
    float_mods = dict(float_model.named_modules())
    targets = [(n, m) for n, m in layers if m.bias is not None]
    skipped = [n for n, m in layers if m.bias is None]
    means: dict[str, torch.Tensor] = {}
    hooks = [float_mods[n].register_forward_hook(
        lambda _m, _i, y, n=n, k=m.quant_kind: means.__setitem__(n, _channel_mean(y, k))) for n, m in targets]
    try:
        float_model.eval()(calib)
    finally:
        for h in hooks:
            h.remove()
    shifts = []

    def correct(m, _inp, y, name):
        delta = (means[name] - _channel_mean(y, m.quant_kind)).to(y.dtype)
        m.bias.add_(delta)
        shifts.append(delta.abs().mean().item())
        return y + _shape(delta, y, m.quant_kind)

    hooks = [m.register_forward_hook(lambda m, i, y, n=n: correct(m, i, y, n)) for n, m in targets if n in means]
    try:
        qmodel.eval()(calib)
    finally:
        for h in hooks:
            h.remove()
    return {"corrected": len(shifts), "skipped_no_bias": skipped,
            "mean_abs_shift": float(sum(shifts) / len(shifts)) if shifts else 0.0}
