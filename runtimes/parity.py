"""Parity between a runtime's outputs and the torch model that was exported.

Three numbers on the same N inputs: top-1 agreement, max abs logit error, SQNR
(10·log10 ‖ref‖²/‖ref−out‖²). Thresholds depend on precision and travel in the manifest, so the
device-side check uses exactly the bar the export passed.
"""
from __future__ import annotations

import math

import numpy as np

from runtimes.errors import ParityError

# FP32: the same arithmetic up to kernel order. Quantised: the runtime re-does the fake-quant model's
# rounding with its own kernels (integer accumulation, fused requantisation), so agreement, not
# bit-equality, is the bar; SQNR guards against a silent scale/layout error that keeps top-1 lucky.
# FP32 max abs: 1e-4, or 1e-5 of the largest reference logit where logits exceed 10 (the same relative
# precision): random-init MobileOne (unfused branches) has logits ~1e15, where torch's own float32 result
# is ~7e8 from its float64 one and TFLite's 1e9 (8e-7 relative, SQNR 125 dB).
THRESHOLDS = {
    "fp32": {"max_abs": 1e-4, "max_rel": 1e-5, "top1_agreement": 1.0},
    "fp16": {"top1_agreement": 0.995, "sqnr_db": 40.0},
    # also the opt-in `integer` graph form (requantisation points the torch model lacks, runtimes.onnx.requant):
    # on the full 10k Fashion-MNIST test set it agrees 99.63 % (mobilenet-mini) and 99.58 % (vit-small)
    "int8": {"top1_agreement": 0.995, "sqnr_db": 25.0},
    "lowbit": {"top1_agreement": 0.99, "sqnr_db": 20.0},
}


def precision_class(precision: str) -> str:
    """'fp32' | 'fp16' | 'int8' | 'lowbit' from a precision like w8a8, w4a16, w4."""
    if precision in ("fp32", "fp16"):
        return precision
    wbits = int(precision[1:].split("a")[0])
    return "int8" if wbits >= 8 else "lowbit"


# An image is a near-tie when the torch model's own top-1 margin is within TIE_SIGMAS × the typical (median
# per-image) RMS logit error: arithmetic that differs by that much (float op order moving a value across an
# activation rounding boundary, compounded over the blocks) may flip it, so its top-1 says nothing about
# the runtime. Trained models have few (the bundled ones: none on 10k images); random-init backbones have
# near-uniform logits and many. Agreement is judged on the decisive images; SQNR covers them all.
TIE_SIGMAS = 4.0


def compare(reference: np.ndarray, output: np.ndarray) -> dict:
    """Parity metrics of `output` against `reference` logits (N, classes): top-1 agreement (all images, and
    the decisive ones that are not near-ties), max abs error, SQNR."""
    ref = np.asarray(reference, np.float64)
    out = np.asarray(output, np.float64)
    if ref.shape != out.shape:
        raise ParityError(f"runtime output shape {out.shape} differs from the torch model's {ref.shape}")
    noise = float(np.square(ref - out).sum())
    sqnr = math.inf if noise == 0 else 10 * math.log10(float(np.square(ref).sum()) / noise)
    agree = ref.argmax(-1) == out.argmax(-1)
    top2 = np.sort(ref, axis=-1)[:, -2:] if ref.shape[-1] > 1 else np.zeros((len(ref), 2))
    sigma = float(np.median(np.sqrt(np.square(ref - out).mean(-1))))   # typical per-image noise: one wrong
    decisive = (top2[:, 1] - top2[:, 0]) > TIE_SIGMAS * sigma            # image cannot widen the tie band
    return {"n": int(ref.shape[0]),
            "top1_agreement": float(agree.mean()),
            "decisive_n": int(decisive.sum()),
            "top1_agreement_decisive": float(agree[decisive].mean()) if decisive.any() else 1.0,
            "max_abs": float(np.abs(ref - out).max()),
            "ref_max_abs": float(np.abs(ref).max()),
            "sqnr_db": "inf" if math.isinf(sqnr) else round(sqnr, 3)}


def max_abs_bar(thresholds: dict, metrics: dict) -> float | None:
    """The max abs error allowed: `max_abs`, widened to `max_rel` × the largest reference logit when that is
    more (metrics from compare(); older records without `ref_max_abs` keep the absolute bar)."""
    if "max_abs" not in thresholds:
        return None
    rel = thresholds.get("max_rel", 0.0) * metrics.get("ref_max_abs", 0.0)
    return max(thresholds["max_abs"], rel)


def failures(metrics: dict, thresholds: dict, exclude_ties: bool = True) -> list[str]:
    """Human-readable list of broken thresholds (empty when parity holds). Agreement is judged on the decisive
    images (see TIE_SIGMAS) unless `exclude_ties` is off: for bars against the float model (TFLite's
    re-quantised INT8), where flips are the quantisation error being measured, not kernel noise."""
    out = []
    bar = max_abs_bar(thresholds, metrics)
    if bar is not None and metrics["max_abs"] > bar:
        out.append(f"max abs error {metrics['max_abs']:.3g} > {bar:.3g}"
                   + (f" ({thresholds['max_rel']:g} of the largest logit)" if bar > thresholds["max_abs"] else ""))
    agreement = metrics.get("top1_agreement_decisive", metrics["top1_agreement"]) if exclude_ties \
        else metrics["top1_agreement"]
    if "top1_agreement" in thresholds and agreement < thresholds["top1_agreement"]:
        ties = metrics["n"] - metrics.get("decisive_n", metrics["n"])
        out.append(f"top-1 agreement {100 * agreement:.2f}% < {100 * thresholds['top1_agreement']:.2f}%"
                   + (f" (on the {metrics['decisive_n']} images that are not near-ties; {ties} excluded)"
                      if ties and exclude_ties else ""))
    sqnr = math.inf if metrics["sqnr_db"] == "inf" else metrics["sqnr_db"]
    if "sqnr_db" in thresholds and sqnr < thresholds["sqnr_db"]:
        out.append(f"SQNR {sqnr:.1f} dB < {thresholds['sqnr_db']:.1f} dB")
    return out


# A quantised model's static activation rounding can amplify float op-order differences block after block
# until its float32 outputs depend on the kernel as much as on the model: real-weight MobileNetV2 W8A8
# (photos:64) sits 21.9 dB from the same model in float64, and torch itself under channels_last convs
# 21.9 dB / 93.7 % top-1 from torch — as far as onnxruntime is (21.6 dB / 93.7 %). No runtime can match
# one float32 realisation closer than another does, so the SQNR bar follows the reference's own noise: two
# float32 realisations each that far from the float64 one differ by up to √2 × that error (3 dB more).
REALISATION_MARGIN_DB = 3.0
# Below this the quantised model is too unstable for any parity bar to mean something: refuse regardless.
MIN_SQNR_DB = 15.0


def with_reference_noise(thresholds: dict, own: dict) -> dict:
    """`thresholds` with the SQNR bar lowered to the reference's own float-order noise when it lies below
    the bar: `own` = compare(float64 realisation, float32 reference). Never below MIN_SQNR_DB; top-1
    agreement on decisive images is left as strict as it was."""
    if "sqnr_db" not in thresholds or own["sqnr_db"] == "inf":
        return thresholds
    floor = float(own["sqnr_db"]) - REALISATION_MARGIN_DB
    if floor >= thresholds["sqnr_db"]:
        return thresholds
    return {**thresholds, "sqnr_db": round(max(floor, MIN_SQNR_DB), 1)}


def ties_excluded(precision_class: str) -> bool:
    """Whether a parity class judges agreement on decisive images: every class that compares a runtime with
    the model it was exported from; not TFLite's INT8 classes, whose bar is the PTQ error vs the float model."""
    return not precision_class.startswith("tflite-w")


def check(metrics: dict, thresholds: dict, what: str = "artifact") -> None:
    """Raise ParityError listing every broken threshold."""
    bad = failures(metrics, thresholds)
    if bad:
        raise ParityError(f"parity failed for {what} on {metrics['n']} images: " + "; ".join(bad))


def differences(metrics: dict, recorded: dict | None, sqnr_tol_db: float = 3.0, agreement_tol: float = 0.01) -> list[str]:
    """How `metrics` measured here differ from the `recorded` export-time ones beyond what another image
    subset explains (SQNR by more than `sqnr_tol_db`, agreement by more than `agreement_tol`): the sign of
    integer kernels that compute differently on this CPU. Empty when they agree or nothing was recorded."""
    if not recorded:
        return []
    out = []
    # above ~60 dB both sides are float-exact up to kernel order: compare what lies below it
    here, then = (min(60.0, math.inf if m["sqnr_db"] == "inf" else float(m["sqnr_db"])) for m in (metrics, recorded))
    if abs(here - then) > sqnr_tol_db:
        out.append(f"SQNR {here:.1f} dB here vs {then:.1f} dB recorded")
    key = "top1_agreement_decisive" if "top1_agreement_decisive" in recorded else "top1_agreement"
    if abs(metrics[key] - recorded[key]) > agreement_tol:
        out.append(f"top-1 agreement {100 * metrics[key]:.2f}% here vs {100 * recorded[key]:.2f}% recorded")
    return out
