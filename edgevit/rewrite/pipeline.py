"""Run the pass list on a model, checking after each pass that FP32 outputs still match."""
from __future__ import annotations

import copy

import torch
from torch import nn

from edgevit.errors import StageError, UsageError
from edgevit.rewrite.passes import PASS_NAMES, PASSES, PassContext
from edgevit.rewrite.targets import Target

TOLERANCE = 1e-4


def max_rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    """max |out − ref| / max |ref|: relative to the output's scale, so near-zero logits don't blow it up."""
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def validate_passes(disable: list[str]) -> None:
    unknown = [p for p in disable if p not in PASS_NAMES]
    if unknown:
        raise UsageError(f"unknown pass {unknown[0]!r}; passes are {', '.join(PASS_NAMES)} (see --list-passes)")


def rewrite_model(model: nn.Module, target: Target, x: torch.Tensor, input_shape: tuple[int, ...],
                  disable: list[str] = (), gelu_form: str | None = None, y: torch.Tensor | None = None):
    """Apply every enabled pass to a copy of `model`; returns (new model, report dict).

    `x` are real inputs (equivalence and data-flow tracing), `y` their labels (accuracy change of a
    non-exact GELU form). An exact pass that moves outputs by more than 1e-4 is a bug: StageError.
    """
    validate_passes(list(disable))
    model = copy.deepcopy(model).eval()
    ref = _logits(model, x)
    ctx = PassContext(sample=x[:2], input_shape=tuple(input_shape), gelu_form=gelu_form or target.gelu)
    steps = []
    for p in PASSES:
        if p.name in disable:
            steps.append({"pass": p.name, "enabled": False})
            continue
        model, info = p.run(model, ctx)
        model.eval()
        err = max_rel_err(ref, _logits(model, x))
        step = {"pass": p.name, "enabled": True, "max_rel_err": err, **info}
        if p.exact and err > TOLERANCE:
            raise StageError(f"pass {p.name} changed FP32 outputs by {err:.2e} (> {TOLERANCE:g}); "
                             f"disable it with --disable {p.name} and report the model")
        if not p.exact and y is not None and info.get("replaced"):
            out = _logits(model, x)
            step["top1_before"] = float((ref.argmax(1) == y).double().mean() * 100)
            step["top1_after"] = float((out.argmax(1) == y).double().mean() * 100)
        steps.append(step)
    final = max_rel_err(ref, _logits(model, x))
    return model, {"target": target.name, "passes": steps, "max_rel_err": final, "samples": len(x)}
