"""Quantisation-robustness report (AutoNeural's metric): relative RMS error and SQNR = −20·log10(relRMS)
of every layer's output and of the encoder output under W8A16, W8A8 and W4A16.

A small self-contained fake-quant (quant/ is not importable yet): weights symmetric per output channel,
activations asymmetric per tensor with min/max from calibration data, round-to-nearest — the
plain PTQ an NPU compiler applies, so the numbers measure the graph's robustness, not a clever
quantiser. Every layer output (and the model input) is quantised, errors propagate as on device.
"""
from __future__ import annotations

import copy
import math
import re

import torch
from torch import nn

from edgevit.errors import UsageError

_WEIGHTED = (nn.Conv2d, nn.Linear)
_SKIP = (nn.Identity, nn.Dropout, nn.Sequential, nn.ModuleList)


def parse_precision(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"w(\d+)a(\d+)", spec.lower())
    if not m or not (2 <= int(m[1]) <= 16 and 2 <= int(m[2]) <= 16):
        raise UsageError(f"bad precision {spec!r}; write wNaM with 2 ≤ N, M ≤ 16, e.g. w8a16")
    return int(m[1]), int(m[2])


def rel_rms(reference: torch.Tensor, test: torch.Tensor) -> float:
    """‖test − reference‖₂ / ‖reference‖₂ over all elements."""
    ref = reference.double()
    return float((test.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def sqnr_from_rel_rms(rel: float) -> float:
    return float("inf") if rel == 0 else -20.0 * math.log10(rel)


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel round-to-nearest."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12) / qmax
    scale = scale.reshape(-1, *([1] * (w.dim() - 1)))
    return (w / scale).round().clamp(-qmax - 1, qmax) * scale


def fake_quant_act(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """Asymmetric per-tensor with the calibrated range [lo, hi] (always containing 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    levels = 2 ** bits - 1
    scale = max(hi - lo, 1e-12) / levels
    zero = round(-lo / scale)
    return ((x / scale).round() + zero).clamp(0, levels).sub(zero).mul(scale)


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules that compute something (convs, linears, norms, activations), in definition order."""
    return [(n, m) for n, m in model.named_modules()
            if n and not list(m.children()) and not isinstance(m, _SKIP)]


def encoder_name(model: nn.Module) -> str:
    """The module whose output is the encoder output: `norm` for ViTs, `features` for CNNs."""
    names = dict(model.named_modules())
    for cand in ("norm", "features", "encoder"):
        if cand in names and not isinstance(names[cand], nn.Identity):
            return cand
    return ""


@torch.no_grad()
def _ranges(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple[float, float]]:
    mods, rng, hooks = dict(model.named_modules()), {}, []

    def hook(name):
        def f(_, __, out):
            lo, hi = float(out.min()), float(out.max())
            old = rng.get(name, (lo, hi))
            rng[name] = (min(lo, old[0]), max(hi, old[1]))
        return f
    hooks = [mods[n].register_forward_hook(hook(n)) for n in names]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    rng[""] = (float(x.min()), float(x.max()))
    return rng


@torch.no_grad()
def _quantised_copy(model, names, ranges, w_bits, a_bits):
    q = copy.deepcopy(model)
    mods = dict(q.named_modules())
    for n in names:
        m = mods[n]
        if isinstance(m, _WEIGHTED):
            m.weight.copy_(fake_quant_weight(m.weight, w_bits))
        if n in ranges:
            lo, hi = ranges[n]
            m.register_forward_hook(lambda _, __, out, lo=lo, hi=hi: fake_quant_act(out, lo, hi, a_bits))
    return q


@torch.no_grad()
def _outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    mods, outs = dict(model.named_modules()), {}
    hooks = [mods[n].register_forward_hook(lambda _, __, o, n=n: outs.__setitem__(n, o)) for n in names]
    try:
        y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return outs, y


@torch.no_grad()
def robustness(model: nn.Module, calib: torch.Tensor, x: torch.Tensor,
               precisions=("w8a16", "w8a8", "w4a16"), top_k: int = 3) -> dict:
    """Per-layer and encoder relRMS/SQNR for each precision; `dominant` names the `top_k` layers whose
    quantisation alone costs the encoder output the most."""
    model = model.eval()
    all_layers = [n for n, _ in layers(model)]
    enc = encoder_name(model)
    ranges = _ranges(model, all_layers, calib)
    fp_outs, fp_y = _outputs(model, all_layers + ([enc] if enc else []), x)
    fp_enc = fp_outs.get(enc, fp_y)
    report = {"encoder": enc or "output", "layers": all_layers, "precisions": {}}
    for spec in precisions:
        w_bits, a_bits = parse_precision(spec)
        q = _quantised_copy(model, all_layers, ranges, w_bits, a_bits)
        lo, hi = ranges[""]
        q_outs, q_y = _outputs(q, all_layers + ([enc] if enc else []), fake_quant_act(x, lo, hi, a_bits))
        per_layer = {n: rel_rms(fp_outs[n], q_outs[n]) for n in all_layers}
        enc_rel = rel_rms(fp_enc, q_outs.get(enc, q_y))
        isolated = {}
        for n in all_layers:       # one layer quantised at a time: who dominates the encoder error
            one = _quantised_copy(model, [n], {n: ranges[n]}, w_bits, a_bits)
            o, y1 = _outputs(one, [enc] if enc else [], x)
            isolated[n] = rel_rms(fp_enc, o.get(enc, y1))
        dominant = sorted(isolated, key=isolated.get, reverse=True)[:top_k]
        report["precisions"][spec] = {
            "encoder_rel_rms": enc_rel, "encoder_sqnr_db": sqnr_from_rel_rms(enc_rel),
            "logits_sqnr_db": sqnr_from_rel_rms(rel_rms(fp_y, q_y)),
            "top1_agreement": float((fp_y.argmax(1) == q_y.argmax(1)).double().mean() * 100),
            "layers": {n: {"rel_rms": r, "sqnr_db": sqnr_from_rel_rms(r)} for n, r in per_layer.items()},
            "dominant": [{"layer": n, "encoder_rel_rms_alone": isolated[n]} for n in dominant]}
    return report


def summary_line(name: str, report: dict) -> str:
    parts = [f"{p} {r['encoder_sqnr_db']:.1f} dB ({100 * r['encoder_rel_rms']:.2f}%)"
             for p, r in report["precisions"].items()]
    first = next(iter(report["precisions"].values()), None)
    worst = f"; dominated by {', '.join(d['layer'] for d in first['dominant'])}" if first else ""
    return f"{name}: encoder SQNR " + ", ".join(parts) + worst


def plot(reports: dict[str, dict], path) -> None:
    """Per-layer SQNR bars, one panel per model variant, one bar colour per precision."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(len(reports), 1, figsize=(max(8, 0.12 * max(len(r["layers"]) for r in reports.values())),
                                                      3.2 * len(reports)), squeeze=False)
    for ax, (title, rep) in zip(axes[:, 0], reports.items()):
        names, precs = rep["layers"], list(rep["precisions"])
        width = 0.8 / max(len(precs), 1)
        for i, p in enumerate(precs):
            vals = [min(rep["precisions"][p]["layers"][n]["sqnr_db"], 120) for n in names]
            ax.bar(np.arange(len(names)) + i * width, vals, width, label=f"{p} (encoder "
                   f"{rep['precisions'][p]['encoder_sqnr_db']:.1f} dB)")
        ax.set_title(title)
        ax.set_ylabel("SQNR [dB]")
        ax.set_xticks(np.arange(len(names)) + 0.4, names, rotation=90, fontsize=5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
