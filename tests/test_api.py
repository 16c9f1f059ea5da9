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
        edgevit.quantize(model, meta, "int", "auto", eval_data=None)
    with pytest.raises(UsageError, match="not an artifact directory"):
        edgevit.load_artifact(tmp_path / "nothing")
    assert {"load_model", "quantize", "export", "run", "check_parity", "run_pipeline"} <= set(dir(edgevit))


@pytest.mark.parametrize("verb, kind, skip", [
    ("rewrite_model", "rewrite", set()),
    ("split_model", "split", set()),
    ("quantize", "quantize", set()),
])
def test_api_keyword_defaults_are_the_cli_defaults(verb, kind, skip):
    """Every keyword a verb shares with its command defaults to the command's default."""
    import inspect

    import click

    from edgevit.stage_options import STAGES, default_of, stage_command
    ctx = click.Context(stage_command(kind))
    renamed = {"family": "fmt", "target_name": "target", "devices_spec": "devices"}
    by_python = {renamed.get(p.name, p.name): default_of(p, ctx) for p in STAGES[kind]}
    sig = inspect.signature(getattr(edgevit, verb)).parameters
    shared = [n for n in sig if n in by_python and n not in skip and sig[n].default is not inspect.Parameter.empty]
    assert len(shared) >= 4
    for n in shared:
        want = by_python[n]
        got = sig[n].default
        assert (list(got) if isinstance(got, tuple) else got) == want, f"{verb}({n}=…) defaults to {got!r}, CLI to {want!r}"


def test_rewrite_model_api(tmp_path):
    model, meta = edgevit.load_model("vit-tiny")
    r = edgevit.rewrite_model(model, meta, "ane", data="fashion-mnist:16", report=False)
    assert r.meta.history[-1]["stage"] == "rewrite" and r.meta.history[-1]["target"] == "ane"
    assert r.report["max_rel_err"] < 1e-3 and r.report["violations_after"] <= r.report["violations_before"]
    out = r.save(tmp_path / "rw")
    assert (out / "rewrite.json").is_file() and (out / "model.onnx").is_file()
    with pytest.raises(UsageError, match="not empty"):
        r.save(tmp_path / "rw")
    with pytest.raises(UsageError, match="ModelMeta"):
        edgevit.rewrite_model(model)


def test_stitch_models_rejects_bad_options_before_work(tmp_path):
    with pytest.raises(UsageError, match="did you mean 'epochs'"):
        edgevit.stitch_models(["vit-tiny", "vit-small"], tmp_path / "s", epoch=1)
    with pytest.raises(UsageError, match="lr"):
        edgevit.stitch_models("vit-tiny,vit-small", tmp_path / "s", lr=-1)
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_split_and_stitch_through_the_api(tmp_path):
    model, meta = edgevit.load_model("vit-tiny")
    res = edgevit.split_model(model, meta, devices=2, out=tmp_path / "split", train_images=64, fusion_images=32, epochs=1,
                              eval_data="fashion-mnist:32", latency_rounds=5, work_dir=tmp_path / "w", progress=False)
    assert (tmp_path / "split" / "manifest.json").is_file() and len(res.plan["devices"]) == 2
    assert res.report["accuracy"]["eval_images"] == 32 and res.meta.history[-1]["stage"] == "split"
    m = edgevit.stitch_models(["vit-small", "vit-tiny"], tmp_path / "stitch", epochs=0, warmup_epochs=0,
                              train_data="fashion-mnist:64", eval_data="fashion-mnist:64", latency_iters=2,
                              calib_images=16, device="cpu", progress=False)
    assert m["metrics"]["num_configs"] == 36 and (tmp_path / "stitch" / "manifest.json").is_file()


def test_an_imagenet_model_is_never_evaluated_on_fashion_mnist():
    model, meta = edgevit.load_model("mobilenetv2")
    with pytest.raises(UsageError, match="not a Fashion-MNIST model"):
        edgevit.quantize(model, meta, eval_data="fashion-mnist:8")
