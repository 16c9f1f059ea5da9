"""The device demo in a fresh venv WITHOUT torch: onnxruntime + numpy + Pillow from PyPI only."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_demo_in_a_torch_free_venv(tmp_path):
    import torch
    from PIL import Image
    from edgevit.data import load_data
    from edgevit.data.fashion_mnist import load_fashion_mnist
    from edgevit.models.registry import load_model
    from runtimes.onnx.artifact import export_onnx_artifact
    model, meta = load_model("vit-tiny")
    x, _ = load_data("fashion-mnist:8", meta.preprocess, split="test", seed=0)
    art = tmp_path / "art"
    export_onnx_artifact(model, art, input_shape=meta.input_shape, preprocess=meta.preprocess.to_dict(),
                         labels=list(meta.labels), parity_inputs=x.numpy())
    images, labels = load_fashion_mnist("test")
    paths = []
    for i in range(8):
        p = tmp_path / f"{i}.png"
        Image.fromarray(images[i].numpy() if hasattr(images[i], "numpy") else images[i]).save(p)
        paths.append(str(p))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "onnxruntime", "numpy", "pillow"],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f"PyPI not reachable: {pip.stderr.strip().splitlines()[-1:]}")
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0                                  # the venv really has no torch
    res = subprocess.run([str(py), str(ROOT / "examples/device_demo/classify.py"), str(art), *paths, "--json"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = [r["top"][0]["label"] for r in json.loads(res.stdout)["results"]]
    from runtimes.preprocess import load_images
    with torch.no_grad():
        ref = model(torch.from_numpy(load_images(paths, meta.preprocess.to_dict()))).argmax(-1)
    assert got == [meta.labels[i] for i in ref]
