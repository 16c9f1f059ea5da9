"""The public API (`import edgevit`): the verbs take plain objects and agree with the CLI's files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgevit
from edgevit.errors import UsageError


@pytest.mark.slow
def test_quantize_save_export_run_check_with_tensors(tmp_path, fmnist_test):
    model, meta = edgevit.load_model("vit-tiny")
    from edgevit.data import load_data
    x, _ = load_data("fashion-mnist:32", meta.preprocess, split="train", seed=0)
    q = edgevit.quantize(model, meta, "int", "w8a8", calib=x.numpy())          # an array calibrates too
    assert q.spec.bits == "w8a8" and q.meta.history[-1]["stage"] == "quantize"
    with torch.no_grad():
        assert (q.model(x[:8]).argmax(-1) == model(x[:8]).argmax(-1)).float().mean() > 0.7
    q.save(tmp_path / "q")
    assert json.loads((tmp_path / "q" / "quant.json").read_text())["model"]["registry_name"] == "vit-tiny"
    art = edgevit.export(q, tmp_path / "a", parity_data_spec="fashion-mnist:64")   # straight from memory
    assert art.precision() == "w8a8" and art.manifest["parity"]["metrics"]["top1_agreement"] >= 0.995
    art2 = edgevit.export(tmp_path / "q", tmp_path / "b", parity_data_spec="fashion-mnist:64")  # from the checkpoint
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    check = edgevit.check_parity(art2, data="fashion-mnist:64")
    assert check.ok and check.differences == [] and check.recorded_machine["arch"] == check.machine["arch"]
    from PIL import Image
    img = tmp_path / "shirt.png"
    Image.fromarray(fmnist_test[0][0]).save(img)
    (top,) = edgevit.run(art, [img], top=3)
    assert len(top) == 3 and top[0][0] in meta.labels and abs(sum(p for _, p in top) - 1) < 0.5


def test_api_rejects_bad_input_with_usage_errors(tmp_path):
    model, meta = edgevit.load_model("vit-tiny")
    with pytest.raises(UsageError, match="calibration images have shape"):
        edgevit.quantize(model, meta, calib=np.zeros((4, 3, 28, 28), np.float32))
    with pytest.raises(UsageError):
        edgevit.quantize(model, meta, "int", "w9a3", calib=torch.zeros(2, 1, 28, 28))
    with pytest.raises(UsageError, match="bits='auto'"):
        edgevit.quantize(model, meta, "int", "auto")
    with pytest.raises(UsageError, match="not an artifact directory"):
        edgevit.load_artifact(tmp_path / "nothing")
    assert {"load_model", "quantize", "export", "run", "check_parity", "run_pipeline"} <= set(dir(edgevit))
