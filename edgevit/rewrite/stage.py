"""The rewrite stage as one call: original graph checked, passes applied and proven, rewritten graph checked,
quantisation-robustness measured — what `edgevit rewrite` prints and `edgevit.rewrite_model` returns."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgevit.errors import UsageError
from edgevit.models.meta import ModelMeta


@dataclass
class Rewritten:
    """The rewritten float model, its meta (history gains a `rewrite` entry) and the stage report: per-pass
    max relative error, target violations before/after and, when asked, the robustness reports."""
    model: nn.Module
    meta: ModelMeta
    report: dict

    def save(self, out: str | Path) -> Path:
        """model.pt, model.onnx, rewrite.json and plots into a new directory `out` (atomically)."""
        from edgevit.rewrite.artifact import check_out_dir, write_artifact
        return write_artifact(check_out_dir(out), self.model, self.meta, self.report, self.report.get("robustness"))


def real_inputs(meta: ModelMeta, data: str, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The data spec's images for this model, or a UsageError when they do not fit its input."""
    from edgevit.data import load_data
    x, y = load_data(data, meta.preprocess, split=split, seed=seed)
    if tuple(x.shape[1:]) != tuple(meta.input_shape[1:]):
        raise UsageError(f"{data} gives inputs {tuple(x.shape[1:])} but {meta.name} takes {meta.input_shape[1:]}; "
                         "pass --data folder:PATH with images for this model")
    return x, y


def rewrite_stage(module: nn.Module, meta: ModelMeta, target: str = "qnn-htp", *, data: str = "auto:256",
                  disable: tuple[str, ...] = (), gelu: str | None = None, report: bool = True, seed: int = 0,
                  status=None) -> Rewritten:
    """Rewrite `module` for `target` (see `edgevit rewrite --list-passes`) and measure it on `data`
    (test split for equivalence and checks, train split for the robustness report's calibration).
    `status(message)`: an optional context manager shown while a long step runs (the CLI's spinner)."""
    from edgevit.rewrite.checker import check_model, total_violations
    from edgevit.rewrite.pipeline import rewrite_model, validate_passes
    from edgevit.rewrite.robustness import robustness
    from edgevit.rewrite.targets import load_target
    status = status or (lambda _msg: nullcontext())
    validate_passes(list(disable))
    tgt = load_target(target)
    x, y = real_inputs(meta, data, "test", seed)
    calib = x[: min(8, len(x))].numpy()
    with status("checking the original graph"):
        before = check_model(module, meta.input_shape, tgt, calib)
    new, rep = rewrite_model(module, tgt, x, meta.input_shape, disable=list(disable), gelu_form=gelu, y=y)
    with status("checking the rewritten graph"):
        after = check_model(new, meta.input_shape, tgt, calib)
    rep.update(check_before=before, check_after=after,
               violations_before=total_violations(before), violations_after=total_violations(after))
    if report:
        with status("quantisation-robustness report (W8A16, W8A8, W4A16)"):
            cal_x, _ = real_inputs(meta, data, "train", seed)
            ev = x[:128]
            rep["robustness"] = {"before rewrite": robustness(module, cal_x, ev),
                                 "after rewrite": robustness(new, cal_x, ev)}
    meta = meta.with_stage("rewrite", target=tgt.name, passes=[s["pass"] for s in rep["passes"] if s["enabled"]],
                           max_rel_err=rep["max_rel_err"])
    return Rewritten(new, meta, rep)
