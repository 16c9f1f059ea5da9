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
THRESHOLDS = {
    "fp32": {"max_abs": 1e-4, "top1_agreement": 1.0},
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


def compare(reference: np.ndarray, output: np.ndarray) -> dict:
    """Parity metrics of `output` against `reference` logits (N, classes)."""
    ref = np.asarray(reference, np.float64)
    out = np.asarray(output, np.float64)
    if ref.shape != out.shape:
        raise ParityError(f"runtime output shape {out.shape} differs from the torch model's {ref.shape}")
    noise = float(np.square(ref - out).sum())
    sqnr = math.inf if noise == 0 else 10 * math.log10(float(np.square(ref).sum()) / noise)
    return {"n": int(ref.shape[0]),
            "top1_agreement": float((ref.argmax(-1) == out.argmax(-1)).mean()),
            "max_abs": float(np.abs(ref - out).max()),
            "sqnr_db": "inf" if math.isinf(sqnr) else round(sqnr, 3)}


def failures(metrics: dict, thresholds: dict) -> list[str]:
    """Human-readable list of broken thresholds (empty when parity holds)."""
    out = []
    if "max_abs" in thresholds and metrics["max_abs"] > thresholds["max_abs"]:
        out.append(f"max abs error {metrics['max_abs']:.3g} > {thresholds['max_abs']:.3g}")
    if "top1_agreement" in thresholds and metrics["top1_agreement"] < thresholds["top1_agreement"]:
        out.append(f"top-1 agreement {100 * metrics['top1_agreement']:.2f}% < "
                   f"{100 * thresholds['top1_agreement']:.2f}%")
    sqnr = math.inf if metrics["sqnr_db"] == "inf" else metrics["sqnr_db"]
    if "sqnr_db" in thresholds and sqnr < thresholds["sqnr_db"]:
        out.append(f"SQNR {sqnr:.1f} dB < {thresholds['sqnr_db']:.1f} dB")
    return out


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
    if abs(metrics["top1_agreement"] - recorded["top1_agreement"]) > agreement_tol:
        out.append(f"top-1 agreement {100 * metrics['top1_agreement']:.2f}% here vs "
                   f"{100 * recorded['top1_agreement']:.2f}% recorded")
    return out
