"""PyTorch → .tflite with litert-torch (no TensorFlow), and static int8 with ai-edge-quantizer.

Both tools print progress from C++ and Python; `quiet` keeps that off the user's terminal and puts
its last line into the error when a conversion fails.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from runtimes.errors import ExportError
from runtimes.tflite import quiet as _quiet
from runtimes.tflite import require

# precision → activation bits of ai-edge-quantizer's static recipe (weights are always int8 per-channel)
ACTIVATION_BITS = {"w8a8": 8, "w8a16": 16}
PRECISIONS = ("fp32", *ACTIVATION_BITS)
# "minmax": the quantizer picks per-channel weight scales from max|w|. "model": FC/Conv weights are
# already on an int8 grid (an edgevit AdaRound/BRECQ result, dequantised); their integers and scales
# are recovered exactly instead of re-rounded. Depthwise convs have no recovery kernel: min/max there.
WEIGHT_SCALES = ("minmax", "model")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ExportError(f"TFLite export supports --precision {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def convert_fp32(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Convert `model` (eval, static `input_shape`) to an FP32 .tflite file at `path`."""
    litert_torch = require("litert_torch", "TFLite export")
    path = Path(path)
    sample = (torch.zeros(input_shape),)
    try:
        with _quiet(), torch.no_grad():
            edge = litert_torch.convert(model.eval(), sample)
            path.write_bytes(bytes(edge.model_content()))
    except ExportError as e:
        raise ExportError(f"litert-torch could not convert {type(model).__name__}: {e}") from e
    return path


def signature_input(model: bytes | str | Path) -> tuple[str, str]:
    """(signature key, input name) of the single-input model litert-torch writes."""
    from runtimes.tflite.interpreter import make_interpreter
    sigs = make_interpreter(model).get_signature_list()
    if len(sigs) != 1:
        raise ExportError(f"expected one signature in the converted model, found {list(sigs)}")
    key, sig = next(iter(sigs.items()))
    if len(sig["inputs"]) != 1:
        raise ExportError(f"expected one model input, found {sig['inputs']}")
    return key, sig["inputs"][0]


def static_recipe(precision: str, weight_scales: str = "minmax"):
    """ai-edge-quantizer recipe: its static_wi8_ai{8,16} (min/max), with weight recovery for FC/Conv on request."""
    require("ai_edge_quantizer", "TFLite int8 export")
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    if weight_scales not in WEIGHT_SCALES:
        raise ExportError(f"weight scales must be one of {', '.join(WEIGHT_SCALES)}, not {weight_scales!r}")
    bits, ops = ACTIVATION_BITS[precision], qtyping.TFLOperationName
    rm = recipe_manager.RecipeManager()
    rm.add_static_config(".*", ops.ALL_SUPPORTED, bits, 8, algorithm_key=AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    if weight_scales == "model":  # later entries win for the ops they name
        for op in (ops.FULLY_CONNECTED, ops.CONV_2D):
            rm.add_static_config(".*", op, bits, 8, algorithm_key=AlgorithmName.DEQUANTIZED_WEIGHT_RECOVERY)
    return rm.get_quantization_recipe()


def quantize_static(float_model: str | Path, calibration: np.ndarray, path: str | Path,
                    precision: str = "w8a8", weight_scales: str = "minmax") -> Path:
    """Full-integer quantisation of an FP32 .tflite with ai-edge-quantizer (activations: min/max).

    `calibration` is float32 (N, C, H, W) preprocessed the model's way (edgevit's calibration split);
    the float model has a static batch of 1, so each image is one calibration sample.
    """
    check_precision(precision)
    if precision == "fp32":
        raise ExportError("quantize_static needs an integer precision (w8a8 or w8a16)")
    aeq = require("ai_edge_quantizer.quantizer", "TFLite int8 export")
    recipe = static_recipe(precision, weight_scales)
    calibration = np.ascontiguousarray(calibration, np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ExportError(f"calibration data must be a non-empty (N, C, H, W) array, got shape {calibration.shape}")
    float_bytes = Path(float_model).read_bytes()
    key, name = signature_input(float_bytes)
    samples = {key: [{name: calibration[i:i + 1]} for i in range(len(calibration))]}
    path = Path(path)
    try:
        with _quiet():
            q = aeq.Quantizer(float_bytes, recipe)
            stats = q.calibrate(samples, num_threads=1)
            result = q.quantize(stats, enable_progress_report=False)
            path.write_bytes(bytes(result.quantized_model))
    except ExportError as e:
        hint = ("; the model's FC/Conv weights are not on an int8 grid — pass a dequantised int8 model "
                "or use weight scales 'minmax'") if weight_scales == "model" and "recover" in str(e) else ""
        raise ExportError(f"ai-edge-quantizer failed ({precision}): {e}{hint}") from e
    return path
