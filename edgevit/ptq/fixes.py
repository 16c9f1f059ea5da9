"""The graph fixes PTQ runs around rounding, with per-model defaults: BatchNorm folding, cross-layer
equalisation (pairs and residual streams), empirical bias correction, BN re-estimation. The algorithms
live in quant/; this module decides when each one helps (measured in benchmarks/results/ptq_toolbox.json)."""
from __future__ import annotations

import copy

import torch

from edgevit.errors import UsageError


def graph_defaults(fmodel, fold_bn, equalize, bias_correction, bn_reestimate, method: str = "rtn") -> dict:
    """Resolve None ("auto") per model and method: folding and CLE help CNNs with BN (MobileNet family:
    depthwise ranges). Bias correction needs the folded biases and follows plain rounding only: AdaRound and
    BRECQ fit each unit's output *after* its activation, so pre-activation mean shifts they leave where ReLU6
    clips are harmless — and "correcting" them adds error: on MobileNetV2 W4A8 AdaRound + bias correction
    gave logit SQNR 2.3 dB (agreement 51 %) against 12.0 dB (75 %) without, while after RTN it lifts the same
    model 17 → 46 %. BN re-estimation (unfolded BN only) is opt-in: on mobilenet-mini it
    lifts W4A8 (89.5 → 91.2 %) but cuts W8A8's logit SQNR from 33.9 to 21.2 dB
    (benchmarks/results/ptq_toolbox.json). ViTs have no BN and no ReLU pairs: all off there."""
    import quant.bn as qbn
    has_bn = bool(qbn.batchnorms(fmodel))
    fold = has_bn if fold_bn is None else fold_bn
    return {"fold_bn": fold, "equalize": fold if equalize is None else equalize,
            "bias_correction": (has_bn and method == "rtn") if bias_correction is None else bias_correction,
            "bn_reestimate": bool(bn_reestimate)}


def prepare_graph(fmodel, opts: dict, calib: torch.Tensor | None = None):
    """(prepared float copy, graph description for the checkpoint, report) for the pre-quantisation fixes."""
    import quant.bn as qbn
    import quant.equalize as qeq
    if opts["equalize"] and not opts["fold_bn"] and qbn.batchnorms(fmodel):
        raise UsageError("--equalize needs --fold-bn on a model with BatchNorm (CLE scales the folded convs)")
    model = copy.deepcopy(fmodel).eval()
    report = {}
    if opts["fold_bn"]:
        r = qbn.fold_bn(model)
        report["fold_bn"] = {"folded": len(r["folded"]), "unfolded": r["unfolded"]}
    if opts["equalize"]:
        criterion = opts.get("equalize_criterion") or ("activation" if calib is not None else "weight")
        r = qeq.equalize(model, calib=calib, criterion=criterion, absorb=opts.get("absorb_high_bias", True),
                         streams=opts.get("equalize_streams", True))
        report["equalize"] = {"pairs": len(r["pairs"]), "criterion": r["criterion"], "sweeps": r["sweeps"],
                              "relu6_to_clamp": len(r["clamps"]),
                              "high_bias_absorbed": len(r["absorbed"]), "streams": len(r["streams"])}
    return model, qeq.describe_graph(model, bool(opts["fold_bn"])), report


def post_fixes(prepared, qmodel, calib: torch.Tensor, opts: dict, batch: int = 64) -> dict:
    """After rounding: empirical bias correction, BN re-estimation. The correction comes last on purpose:
    re-calibrating the activation ranges after it would move every grid and undo the rounding bias it
    measured (MobileNetV2 W8A8 logit SQNR 16.5 → 16.1 dB when re-calibrated)."""
    import quant.bn as qbn
    from quant.bias_correction import correct_bias
    report = {}
    if opts["bias_correction"]:
        report["bias_correction"] = correct_bias(prepared, qmodel, calib)
    if opts["bn_reestimate"]:
        report["bn_reestimate"] = qbn.reestimate_bn(qmodel, calib, batch)
    return report

