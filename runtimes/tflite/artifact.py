"""Write a TFLite artifact: model.tflite + manifest, parity-checked against torch before commit.

FP32 is litert-torch's conversion of the model after lower.lower_for_tflite (exact op lowerings
that keep int8 LayerNorms inside XNNPACK; the FP32 graph gets the same form). w8a8/w8a16 are ai-edge-quantizer full-integer models
calibrated on edgevit's data; their ops are checked to be integer through the interpreter's tensor
table before the artifact is written.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from torch import nn

from runtimes import machine, parity
from runtimes.artifact import Artifact, ArtifactWriter, load_artifact, tool_versions
from runtimes.errors import ExportError, ParityError
from runtimes.tflite.convert import ACTIVATION_BITS, check_precision, convert_fp32, quantize_static
from runtimes.tflite.lower import lower_for_tflite
from runtimes.reference import torch_logits

MODEL_FILE = "model.tflite"
SCALES_NOTE = {"minmax": "min-max", "model": "from the model (dequantized-weight recovery; depthwise: min-max)"}

# The int8 model is compared with the *float* torch model: ai-edge-quantizer chooses its own min/max
# ranges, so the bar is that recipe's PTQ error, not the kernel-rounding bar of parity.THRESHOLDS["int8"].
# Measured (Fashion-MNIST test, 256 calibration images): agreement / SQNR vit-tiny 95.7% / 15.5 dB
# (2000 images), vit-small 98.1% / 17.0 dB and mobilenet-mini 99.5% / 20.2 dB (1000 images). The bar
# sits below the weakest so real models export; a broken scale or layout lands far below it.
THRESHOLDS = {"fp32": parity.THRESHOLDS["fp32"],
              "w8a8": {"top1_agreement": 0.94, "sqnr_db": 12.0},
              "w8a16": {"top1_agreement": 0.97, "sqnr_db": 18.0}}


def export_tflite_artifact(model: nn.Module, out: str | Path, *, input_shape: tuple[int, ...], preprocess: dict,
                           labels: list[str], parity_inputs: np.ndarray, parity_labels: np.ndarray | None = None,
                           parity_data: str = "", model_info: dict | None = None, precision: str = "fp32",
                           calibration: np.ndarray | None = None, calibration_data: str = "",
                           weight_scales: str = "minmax", overwrite: bool = False, threads: int = 1,
                           tools: dict | None = None) -> Artifact:
    """Export float `model` as a .tflite artifact at `out` (batch 1, NCHW float input as in torch).

    `precision` fp32 | w8a8 | w8a16; integer precisions need `calibration` (float32 NCHW, preprocessed).
    `weight_scales="model"` keeps the int8 weights and scales already in `model` (see convert.WEIGHT_SCALES).
    Parity on `parity_inputs` must pass THRESHOLDS[precision] or nothing is written (ParityError).
    """
    from runtimes.tflite.inspect import check_integer
    from runtimes.tflite.runner import TfliteRunner
    check_precision(precision)
    if weight_scales not in SCALES_NOTE:
        raise ExportError(f"weight scales must be one of {', '.join(SCALES_NOTE)}, not {weight_scales!r}")
    if precision != "fp32" and (calibration is None or len(calibration) == 0):
        raise ExportError(f"{precision} TFLite export needs calibration images; pass --calib-data")
    shape = (1, *input_shape[1:])
    thresholds = THRESHOLDS[precision]
    lowered, lowering = lower_for_tflite(model)   # parity below is against the original `model`
    with ArtifactWriter(out, overwrite=overwrite) as w:
        path = w.dir / MODEL_FILE
        quant_block, integer = None, None
        if precision == "fp32":
            convert_fp32(lowered, shape, path)
        else:
            with tempfile.TemporaryDirectory() as tmp:  # the float model is a step, not part of the artifact
                float_path = convert_fp32(lowered, shape, Path(tmp) / "float.tflite")
                quantize_static(float_path, calibration, path, precision, weight_scales)
            integer = check_integer(path, f"{precision} TFLite model")
            quant_block = {"precision": precision, "graph_form": "tflite-full-integer",
                           "weights": {"dtype": "int8", "granularity": "per-channel", "symmetric": True,
                                       "scales": SCALES_NOTE[weight_scales]},
                           "activations": {"dtype": f"int{ACTIVATION_BITS[precision]}", "granularity": "per-tensor",
                                           "calibration": "min-max",
                                           "images": int(len(calibration)), "data": calibration_data},
                           "tool": "ai-edge-quantizer"}
        runner = TfliteRunner(Artifact(w.dir, {"entry": MODEL_FILE}), threads=threads)
        got = runner.run(parity_inputs)
        ref = torch_logits(model, parity_inputs)
        metrics = {**parity.compare(ref, got), "data": parity_data}
        bad = parity.failures(metrics, thresholds, exclude_ties=precision == "fp32")
        if bad:
            raise ParityError(f"export refused: {precision} TFLite disagrees with the torch model on "
                              f"{metrics['n']} images: " + "; ".join(bad))
        export_metrics = {"model_bytes": path.stat().st_size, "lowering": lowering}
        if integer is not None:
            export_metrics["integer_ops"] = {"ops": integer["ops"], "float_ops": len(integer["float_ops"]),
                                             "tensor_dtypes": integer["tensor_dtypes"]}
        if parity_labels is not None:
            export_metrics["top1_runtime"] = float((got.argmax(-1) == parity_labels).mean() * 100)
            export_metrics["top1_torch"] = float((ref.argmax(-1) == parity_labels).mean() * 100)
            export_metrics["top1_images"] = int(len(parity_labels))
        io_dtype = np.dtype(runner._in["dtype"]).name  # noqa: SLF001
        manifest = {
            "runtime": "tflite", "entry": MODEL_FILE,
            "model": model_info or {"name": type(model).__name__},
            # the manifest describes the float tensor callers feed; an integer model's own input
            # dtype and (scale, zero point) live in the .tflite and are applied by the runner
            "input": {"name": runner.input_name, "shape": list(shape), "dtype": "float32",
                      "model_dtype": io_dtype},
            "output": {"name": runner.output_name, "shape": [1, int(got.shape[-1])], "dtype": "float32"},
            "preprocess": {"resize": "bilinear", "pixel_scale": 1 / 255, "layout": "NCHW", **preprocess},
            "labels": list(labels),
            "quant": quant_block,
            "parity": {"precision_class": f"tflite-{precision}", "thresholds": thresholds, "metrics": metrics,
                       "machine": machine.describe()},
            "metrics": export_metrics,
            "tools": {**tool_versions("torch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "numpy"),
                      **(tools or {})},
        }
        w.commit(manifest)
    return load_artifact(out)
