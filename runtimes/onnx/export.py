"""Float ONNX export shared by every stage that needs an ONNX graph (check, split, stitch, export)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, opset: int = 17,
                dynamic_batch: bool = True, input_names=("input",), output_names=("logits",),
                extra_inputs: tuple[torch.Tensor, ...] = ()) -> Path:
    """Export `model` (eval mode, FP32) with the TorchScript exporter; the file appears atomically.

    The TorchScript path (`dynamo=False`) is used because it needs no onnxscript and gives stable,
    readable node names; `dynamic_batch=False` gives the fully static shapes NPUs want. `extra_inputs`
    follow the image as further (static) graph inputs, named by the rest of `input_names`: the
    quantised exporter passes the low-bit layers' weights this way, so constant folding cannot touch them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dummy = torch.zeros(input_shape)
    axes = {n: {0: "batch"} for n in (input_names[0], *output_names)} if dynamic_batch else None
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(model, (dummy, *extra_inputs), tmp, opset_version=opset, dynamo=False,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=axes, do_constant_folding=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
