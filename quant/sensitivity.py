"""Per-layer sensitivity: what quantising one layer alone costs, and what keeping one layer float buys.

The quantised model is built once (all quantisers calibrated); a layer is "left float" by detaching its
quantisers for the duration of a forward pass (`only`), so each configuration costs one batched forward
over the evaluation set and nothing is re-calibrated or copied. Per layer: the logit SQNR and top-1
change with only that layer quantised, and the top-1 with every layer but it quantised.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn

from quant.analysis import sqnr_db
from quant.modules import quantized_layers

_SLOTS = {"linear": ("weight_quant", "input_quant"), "conv": ("weight_quant", "input_quant"),
          "attention": ("q_quant", "k_quant", "v_quant", "softmax_quant"), "norm": ("input_quant",),
          "gelu": ("input_quant",)}
_NONE_OK = {"weight_quant", "input_quant", "softmax_quant"}   # slots the module checks for None


@contextlib.contextmanager
def only(qmodel: nn.Module, names: Iterable[str]):
    """Inside the block only the layers in `names` are quantised; the others run in float."""
    keep = set(names)
    saved = []
    for name, m in quantized_layers(qmodel):
        if name in keep:
            continue
        for slot in _SLOTS[m.quant_kind]:
            q = getattr(m, slot, None)
            if q is None:
                continue
            saved.append((m, slot, q))
            setattr(m, slot, None if (slot in _NONE_OK and m.quant_kind in ("linear", "conv")) or
                    slot == "softmax_quant" else nn.Identity())
    try:
        yield
    finally:
        for m, slot, q in saved:
            setattr(m, slot, q)


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([model(b) for b in x.split(batch)])


def _top1(out: torch.Tensor, target: torch.Tensor) -> float:
    return 100.0 * (out.argmax(-1) == target).double().mean().item()


@torch.no_grad()
def layer_sensitivity(float_model: nn.Module, qmodel: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                      leave_one_out: bool = True, batch: int = 256,
                      progress: Callable[[Iterable], Iterable] = iter, layers: Iterable[str] | None = None) -> dict:
    """Sensitivity of every quantised layer of `qmodel` on (x, y); without labels top-1 means agreement with
    the float model. Returns {"float_top1", "quant_top1", "quant_sqnr_db", "metric", "layers": [rows]}, each
    row: layer, kind, params, only_sqnr_db, only_top1, only_drop, and (leave_one_out) float_top1 / float_gain.
    `layers`: rows for these layers only (in model order) — how a caller shards the work across processes;
    each row is the same as in the full run."""
    ref = logits(float_model.eval(), x, batch)
    target = y if y is not None else ref.argmax(-1)
    qmodel.eval()
    full = logits(qmodel, x, batch)
    base_f, base_q = _top1(ref, target), _top1(full, target)
    every = quantized_layers(qmodel)
    names = [n for n, _ in every]
    wanted = None if layers is None else set(layers)
    rows = []
    for name, m in progress([(n, m) for n, m in every if wanted is None or n in wanted]):
        with only(qmodel, [name]):
            out = logits(qmodel, x, batch)
        row = {"layer": name, "kind": m.quant_kind,
               "params": int(m.weight.numel()) if getattr(m, "weight_quant", None) is not None else 0,
               "only_sqnr_db": sqnr_db(ref, out), "only_top1": _top1(out, target)}
        row["only_drop"] = base_f - row["only_top1"]
        if leave_one_out:
            with only(qmodel, [n for n in names if n != name]):
                out = logits(qmodel, x, batch)
            row["float_top1"] = _top1(out, target)
            row["float_gain"] = row["float_top1"] - base_q
        rows.append(row)
    return {"metric": "top1" if y is not None else "agreement", "images": len(x), "float_top1": base_f,
            "quant_top1": base_q, "quant_sqnr_db": sqnr_db(ref, full), "layers": rows}


def ranked(result: dict, k: int = 10) -> list[dict]:
    """The k layers that matter most: largest drop alone, then lowest SQNR alone."""
    return sorted(result["layers"], key=lambda r: (-r["only_drop"], r["only_sqnr_db"]))[:k]
