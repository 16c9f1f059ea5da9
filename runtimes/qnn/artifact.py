"""Write a QNN artifact: QDQ ONNX (entry) + float ONNX + AIMET-style encodings + context binaries.

Layout:
  model.qdq.onnx      static batch 1, QDQ with QNN-legal encodings; runs on QNN HTP, uploads to AI Hub
  model.fp32.onnx     the same graph in float, tensor names matching the encodings
  model.encodings     AIMET 1.0.0 encodings (Qualcomm converters' --quantization_overrides)
  contexts/SOC.onnx   EPContext ONNX with the QNN context binary compiled offline for that Snapdragon

Nothing is written unless every node is placed on HTP, every requested context compiles, and the
emulator's outputs agree with the torch fake-quant model on the parity images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from runtimes import machine, parity
from runtimes.artifact import Artifact, ArtifactWriter, load_artifact, tool_versions
from runtimes.errors import ExportError, ParityError
from runtimes.qnn.compile import compile_context, parse_soc
from runtimes.qnn.errors import QnnMissing, require_qnn
from runtimes.reference import torch_logits

ENTRY, FLOAT, ENCODINGS = "model.qdq.onnx", "model.fp32.onnx", "model.encodings"

# Against the torch fake-quant model. QNN quantises every tensor edgevit keeps float (LayerNorm
# internals, residual adds, scores) and requantises with its own integer kernels, so agreement, not
# bit-equality, is the bar. Measured on the HTP emulator (benchmarks/qnn_compare.py, Fashion-MNIST test
# images, rewritten vit-tiny on 96 and mobilenet-mini on 256): 16-bit activations 99.6-100 % agreement,
# SQNR 34.8-50.3 dB; 8-bit 97.9-99.2 %, 24.8-33.8 dB; every flip is a near-tie (fake-quant margin in
# the lowest 2 % of images). Export checks only a handful of images, so the
# agreement bar allows one miss in 16; SQNR (well under the measured minimum, far above the ~0 dB of a
# wrong scale or layout) is the real guard.
THRESHOLDS = {"a16": {"top1_agreement": 0.9, "sqnr_db": 25.0},
              "a8": {"top1_agreement": 0.9, "sqnr_db": 18.0}}
CONTEXT_CHECK_IMAGES = 4


def export_qnn_artifact(model: nn.Module, out: str | Path, *, input_shape: tuple[int, ...], preprocess: dict,
                        labels: list[str], parity_inputs: np.ndarray, calibration: np.ndarray,
                        parity_labels: np.ndarray | None = None, parity_data: str = "", calibration_data: str = "",
                        model_info: dict | None = None, precision: str | None = None,
                        socs: tuple[str, ...] = ("SM8650",), parity_images: int = 16, overwrite: bool = False,
                        threads: int = 1, tools: dict | None = None) -> Artifact:
    """Bundle `model` for QNN at `out`; compile a context binary per SoC in `socs`.

    `model`: quantised by quant/ (INT weights, static 8/16-bit activations: carried as is) or float
    (quantised here with quant/ at `precision`, default w8a16, on `calibration`). ViTs must already
    be rewritten for qnn-htp (edgevit.rewrite) so shapes are static and rank ≤ 4. Parity runs the
    first `parity_images` of `parity_inputs` on the HTP emulator (~0.1–1 s per image).
    """
    from runtimes.qnn.bundle import build_qdq
    from runtimes.qnn.encodings import write_encodings
    from runtimes.qnn.runner import QnnRunner
    from runtimes.qnn.session import htp_placement
    require_qnn()
    chips = [parse_soc(s) for s in dict.fromkeys(socs)]
    if parity_images < 1 or len(parity_inputs) == 0:
        raise ExportError("the QNN export needs at least one parity image")
    x = np.ascontiguousarray(parity_inputs[:parity_images], np.float32)
    with ArtifactWriter(out, overwrite=overwrite) as w:
        reference, info = build_qdq(model, input_shape, w.dir, calibration, precision, FLOAT, ENTRY)
        enc = write_encodings(info.qdq_path, info.float_path, w.dir / ENCODINGS)
        placement = htp_placement(info.qdq_path)
        if placement.refused or not placement.finalized:
            refused = ", ".join(f"{n} ({op})" for n, op in placement.refused[:5]) or placement.error
            raise ExportError(f"QNN HTP refused {len(placement.refused)} node(s): {refused}; "
                              "run `edgevit rewrite --target qnn-htp` first or `edgevit check` to see why")
        (w.dir / "contexts").mkdir()
        contexts = []
        for soc in chips:
            rel = f"contexts/{soc.name}.onnx"
            contexts.append({"path": rel, **compile_context(info.qdq_path, w.dir / rel, soc)})
        runner = QnnRunner(Artifact(w.dir, {"entry": ENTRY}), threads=threads)
        got = runner.run(x)
        ref = torch_logits(reference, x)
        pclass = "a16" if info.activation_type.endswith("16") else "a8"
        thresholds = THRESHOLDS[pclass]
        metrics = {**parity.compare(ref, got), "data": parity_data}
        bad = parity.failures(metrics, thresholds)
        if bad:
            raise ParityError(f"export refused: QNN HTP ({info.precision}) disagrees with the torch model on "
                              f"{metrics['n']} images: " + "; ".join(bad))
        k = min(CONTEXT_CHECK_IMAGES, len(x))
        for c in contexts:   # the compiled binary itself, on the emulator, against the QDQ run
            cr = QnnRunner(Artifact(w.dir, {"entry": ENTRY, "qnn": {"contexts": [{"soc": c["soc"], "path": c["path"]}]}}),
                           soc=c["soc"])
            c["check_vs_qdq"] = parity.compare(got[:k], cr.run(x[:k]))
        export_metrics = {"model_bytes": info.qdq_path.stat().st_size,
                          "placement": {"nodes_on_htp": placement.on_qnn, "refused": len(placement.refused),
                                        "host_boundary": placement.boundary, "finalized": placement.finalized}}
        if parity_labels is not None:
            y = np.asarray(parity_labels)[: len(x)]
            export_metrics.update(top1_runtime=float((got.argmax(-1) == y).mean() * 100),
                                  top1_torch=float((ref.argmax(-1) == y).mean() * 100), top1_images=int(len(y)))
        act_bits = 16 if pclass == "a16" else 8
        manifest = {
            "runtime": "qnn", "entry": ENTRY,
            "model": model_info or {"name": type(model).__name__},
            "input": {"name": runner.input_name, "shape": [1, *input_shape[1:]], "dtype": "float32"},
            "output": {"name": runner.output_name, "shape": [1, int(got.shape[-1])], "dtype": "float32"},
            "preprocess": {"resize": "bilinear", "pixel_scale": 1 / 255, "layout": "NCHW", **preprocess},
            "labels": list(labels),
            "quant": {"precision": info.precision, "graph_form": "qnn-qdq",
                      "weights": {"dtype": "int8/int4", "granularity": "per-channel", "symmetric": True,
                                  "source": "edgevit (quant/) codes and scales"},
                      "activations": {"dtype": f"uint{act_bits}", "granularity": "per-tensor", "static": True,
                                      "calibration_images": int(len(calibration)), "data": calibration_data},
                      "carried": info.summary(), "encodings": ENCODINGS,
                      "encodings_count": {"activations": len(enc["activation_encodings"]),
                                          "params": len(enc["param_encodings"])}},
            "qnn": {"backend": "HTP", "contexts": contexts, "float_model": FLOAT, "encodings": ENCODINGS},
            "parity": {"precision_class": f"qnn-{pclass}", "thresholds": thresholds, "metrics": metrics,
                       "machine": machine.describe()},
            "metrics": export_metrics,
            "tools": {**tool_versions("torch", "onnx", "onnxruntime", "onnxruntime-qnn", "numpy"), **(tools or {})},
        }
        w.commit(manifest)
    return load_artifact(out)


__all__ = ["export_qnn_artifact", "THRESHOLDS", "QnnMissing"]
