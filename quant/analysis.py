"""Per-layer error of a quantised model against its float original: weight and output SQNR."""
from __future__ import annotations

import torch
from torch import nn

from quant.modules import quantized_layers


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """10·log10(‖ref‖² / ‖ref − test‖²) in dB (inf when identical)."""
    ref = reference.double()
    noise = (ref - test.double()).pow(2).sum().item()
    return float("inf") if noise == 0 else 10.0 * torch.log10(ref.pow(2).sum() / noise).item()


@torch.no_grad()
def layer_sqnr(float_model: nn.Module, qmodel: nn.Module, x: torch.Tensor) -> list[dict]:
    """One row per quantised layer: kind, format, weight SQNR and the SQNR of its output when both
    models run on `x` (the quantised layer sees quantised upstream activations: errors accumulate)."""
    float_mods = dict(float_model.named_modules())
    layers = quantized_layers(qmodel)
    outs: dict[str, list] = {name: [None, None] for name, _ in layers}
    hooks = []
    for name, m in layers:
        for i, mod in enumerate((float_mods[name], m)):
            hooks.append(mod.register_forward_hook(
                lambda _m, _i, out, name=name, i=i: outs[name].__setitem__(i, out.detach())))
    try:
        float_model.eval()(x)
        qmodel.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, m in layers:
        wq = getattr(m, "weight_quant", None)
        aq = getattr(m, "input_quant", None) or getattr(m, "q_quant", None)
        ref, out = outs[name]
        rows.append({"layer": name, "kind": m.quant_kind,
                     "weight_format": wq.fmt.name if wq is not None else None,
                     "act_format": aq.fmt.name if aq is not None else None,
                     "weight_sqnr_db": sqnr_db(float_mods[name].weight, m.qweight()) if wq is not None else None,
                     "output_sqnr_db": sqnr_db(ref, out) if ref is not None and out is not None else None})
    return rows
