"""Write an ONNX artifact: model file + manifest, parity-checked against the torch model before commit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from runtimes import machine, parity
from runtimes.artifact import Artifact, ArtifactWriter, tool_versions
from runtimes.errors import ParityError
from runtimes.onnx.compact import compact
from runtimes.onnx.export import export_onnx
from runtimes.reference import float64_logits, torch_logits

MODEL_FILE = "model.onnx"


def export_onnx_artifact(model: nn.Module, out: str | Path, *, input_shape: tuple[int, ...], preprocess: dict,
                         labels: list[str], parity_inputs: np.ndarray, parity_labels: np.ndarray | None = None,
                         parity_data: str = "", model_info: dict | None = None, quant_spec=None,
                         opset: int | None = None, dynamic_batch: bool = True, overwrite: bool = False,
                         threads: int = 1, tools: dict | None = None, graph_form: str = "exact",
                         calib_inputs: np.ndarray | None = None) -> Artifact:
    """Export `model` (FP32, or with `quant_spec` the quantised graph of runtimes.onnx.quantized) to `out`.

    `model` is the torch reference: the float model, or the fake-quant model whose rounding the quantised
    graph reproduces (`graph_form`, `calib_inputs`: see export_quantized_onnx). Parity on
    `parity_inputs` (preprocessed float32 NCHW) must pass the precision's
    thresholds or nothing is written (ParityError).
    """
    from runtimes.onnx.quantized import export_quantized_onnx
    from runtimes.onnx.runner import OnnxRunner
    precision = quant_spec.precision if quant_spec is not None else "fp32"
    pclass = parity.precision_class(precision)
    thresholds = parity.THRESHOLDS[pclass]
    with ArtifactWriter(out, overwrite=overwrite) as w:
        path = w.dir / MODEL_FILE
        if quant_spec is None:
            export_onnx(model, input_shape, path, opset=opset or 17, dynamic_batch=dynamic_batch)
            quant_block = None
        else:
            quant_block = export_quantized_onnx(model, quant_spec, input_shape, path, opset=opset,
                                                dynamic_batch=dynamic_batch, graph_form=graph_form,
                                                calib_inputs=calib_inputs)
        compact(path)
        runner = OnnxRunner(Artifact(w.dir, {"entry": MODEL_FILE, "quant": quant_block}), threads=threads)
        bs = len(parity_inputs) if dynamic_batch else 1
        got = np.concatenate([runner.run(parity_inputs[i:i + bs]) for i in range(0, len(parity_inputs), bs)])
        ref = torch_logits(model, parity_inputs)
        metrics = {**parity.compare(ref, got), "data": parity_data}
        bad = parity.failures(metrics, thresholds)
        own = None
        if bad and pclass in ("int8", "lowbit"):   # is the reference itself that sensitive to float op order?
            own = parity.compare(float64_logits(model, parity_inputs), ref)
            thresholds = parity.with_reference_noise(thresholds, own)
            bad = parity.failures(metrics, thresholds)
        if bad:
            note = (f" (the torch model in float32 is itself {own['sqnr_db']} dB from float64)" if own else "")
            raise ParityError(f"export refused: {precision} ONNX disagrees with the torch model on "
                              f"{metrics['n']} images: " + "; ".join(bad) + note)
        export_metrics = {"model_bytes": path.stat().st_size}
        if parity_labels is not None:
            export_metrics["top1_runtime"] = float((got.argmax(-1) == parity_labels).mean() * 100)
            export_metrics["top1_torch"] = float((ref.argmax(-1) == parity_labels).mean() * 100)
            export_metrics["top1_images"] = int(len(parity_labels))
        batch = "batch" if dynamic_batch else input_shape[0]
        manifest = {
            "runtime": "onnx", "entry": MODEL_FILE,
            "model": model_info or {"name": type(model).__name__},
            "input": {"name": runner.input_name, "shape": [batch, *input_shape[1:]], "dtype": "float32"},
            "output": {"name": runner.output_name, "shape": [batch, int(got.shape[-1])], "dtype": "float32"},
            "preprocess": {"resize": "bilinear", "pixel_scale": 1 / 255, "layout": "NCHW", **preprocess},
            "labels": list(labels),
            "quant": quant_block,
            "parity": {"precision_class": pclass, "thresholds": thresholds, "metrics": metrics,
                       "machine": machine.describe(),
                       **({"reference_float64": own} if own else {})},
            "metrics": export_metrics,
            "tools": {**tool_versions("torch", "onnx", "onnxruntime", "numpy"), **(tools or {}),
                      "opset": str(opset or (17 if quant_spec is None else quant_block.get("opset", 21)))},
        }
        w.commit(manifest)
    from runtimes.artifact import load_artifact
    return load_artifact(out)


def model_file_bytes(model: nn.Module, quant_spec, input_shape: tuple[int, ...]) -> int:
    """Bytes of the model.onnx that `export_onnx_artifact` would write for the quantised `model` (same export,
    same compaction; no parity run): what a size budget has to hold besides the checkpoint."""
    import tempfile

    from runtimes.onnx.quantized import export_quantized_onnx
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_FILE
        export_quantized_onnx(model, quant_spec, input_shape, path)
        compact(path)
        return path.stat().st_size
