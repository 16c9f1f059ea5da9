"""examples/: the Android app's manifest fields, the AI Hub script's no-token path, the device demo."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ANDROID = ROOT / "examples" / "android"
FIELDS = json.loads((ANDROID / "manifest_fields.json").read_text())["fields"]


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    """A real FP32 vit-tiny ONNX artifact, written by the exporter."""
    import torch
    from edgevit.data import load_data
    from edgevit.models.registry import load_model
    from runtimes.onnx.artifact import export_onnx_artifact
    torch.set_num_threads(1)
    model, meta = load_model("vit-tiny")
    x, y = load_data("fashion-mnist:16", meta.preprocess, split="test", seed=0)
    out = tmp_path_factory.mktemp("art") / "onnx"
    export_onnx_artifact(model, out, input_shape=meta.input_shape, preprocess=meta.preprocess.to_dict(),
                         labels=list(meta.labels), parity_inputs=x.numpy(), parity_labels=y.numpy())
    return out


def _schema_node(schema: dict, path: str) -> dict:
    node = schema
    for part in path.split("/"):
        props = node.get("properties", {})
        assert part in props, f"manifest schema has no {path}"
        node = props[part]
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].split("/")[-1]]
    return node


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f["path"])
def test_android_fields_are_in_the_schema(field):
    from runtimes.artifact import manifest_schema
    node = _schema_node(manifest_schema(), field["path"])
    assert node, field


def test_android_fields_are_in_an_exported_manifest(onnx_artifact):
    m = json.loads((onnx_artifact / "manifest.json").read_text())
    kinds = {"string": str, "integer": int, "number": (int, float), "array": list, "object": dict, "null": type(None)}
    for f in FIELDS:
        v = m
        for part in f["path"].split("/"):
            assert part in v, f"exported manifest lacks {f['path']}"
            v = v[part]
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        assert isinstance(v, tuple(kinds[t] for t in types)), (f["path"], v)


def test_kotlin_parser_reads_exactly_the_listed_fields():
    src = (ANDROID / "app/src/main/java/org/edgevit/demo/ArtifactManifest.kt").read_text()
    read = set(re.findall(r'(?:getString|getInt|getJSONObject|getJSONArray|optJSONObject|optString|optDouble)\("([a-z_]+)"', src))
    read |= set(re.findall(r'floats\("([a-z_]+)"\)', src))
    listed = {f["path"].split("/")[-1] for f in FIELDS} | {f["path"].split("/")[0] for f in FIELDS}
    assert read - {"precision"} <= listed, read - listed
    assert {f["path"].split("/")[-1] for f in FIELDS} <= read | {"shape"}


def _run(args, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def test_device_demo_matches_the_runner(onnx_artifact, tmp_path):
    from PIL import Image
    from edgevit.data.fashion_mnist import load_fashion_mnist
    from runtimes.artifact import load_artifact
    from runtimes.preprocess import load_images
    from runtimes.runner import open_runner
    images, _ = load_fashion_mnist("test")
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.asarray(images[i], np.uint8)).save(p)
        paths.append(str(p))
    res = _run([str(ROOT / "examples/device_demo/classify.py"), str(onnx_artifact), *paths, "--json", "--top", "3"])
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    art = load_artifact(onnx_artifact)
    ref = open_runner(art).run(load_images(paths, art.manifest["preprocess"]))
    assert [r["top"][0]["label"] for r in got["results"]] == [art.labels[i] for i in ref.argmax(-1)]
    assert all(r["latency_ms"] > 0 and len(r["top"]) == 3 for r in got["results"])


def test_device_demo_bad_input_exits_2(onnx_artifact, tmp_path):
    res = _run([str(ROOT / "examples/device_demo/classify.py"), str(tmp_path), "x.png"])
    assert res.returncode == 2 and "no manifest.json" in res.stderr
    res = _run([str(ROOT / "examples/device_demo/classify.py"), str(onnx_artifact), str(tmp_path / "missing.png")])
    assert res.returncode == 2 and "cannot read image" in res.stderr


def test_ai_hub_without_token_explains_and_exits_2(onnx_artifact, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "QAI_HUB_API_TOKEN"}
    env |= {"HOME": str(tmp_path), "QAIHUB_CLIENT_INI": str(tmp_path / "none.ini")}
    res = _run([str(ROOT / "examples/qualcomm_ai_hub/run_on_device.py"), str(onnx_artifact)], env=env)
    assert res.returncode == 2 and "qai-hub configure --api_token" in res.stderr
    res = _run([str(ROOT / "examples/qualcomm_ai_hub/run_on_device.py"), str(tmp_path)], env=env)
    assert res.returncode == 2 and "manifest.json" in res.stderr          # artifact checked before any job


def test_every_example_has_a_status_line():
    for d in (ROOT / "examples").iterdir():
        if d.is_dir():
            assert "**Status:**" in (d / "README.md").read_text(), d
