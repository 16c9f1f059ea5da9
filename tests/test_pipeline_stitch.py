"""The stitch stage inside `edgevit pipeline`: recipe checks, the chosen configuration as the model of
the later stages (quantised and exported on its own), re-quantisation after stitch training, resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgevit.pipeline import load_recipe
from edgevit.pipeline.recipe import stage_keys

ROOT = Path(__file__).resolve().parents[1]
STITCH = {"anchors": "vit-tiny,vit-small", "epochs": 1, "train-data": "fashion-mnist:256",
          "eval-data": "fashion-mnist:200", "calib-images": 32, "latency-iters": 2, "batch-size": 64,
          "device": "cpu"}


def write(tmp_path, doc) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_stitch_recipe_keys_are_its_cli_flags_plus_the_selection():
    keys = stage_keys("stitch")
    assert {"anchors", "weights", "device", "epochs", "kernel", "two-way", "config", "max-macs",
            "max-latency-ms"} <= set(keys)
    assert keys["weights"] is not None          # per-anchor weights: a stitch flag, not the top-level key
    assert load_recipe(ROOT / "recipes" / "vit-stitch.yaml").stages[0].options["max-macs"] == "8M"


@pytest.mark.parametrize("stitch, message", [
    ({"anchors": "vit-tiny"}, "at least two different models"),
    ({"anchors": "vit-tiny,mobilenet-mini"}, "not a ViT"),
    ({"anchors": "vit-tiny,vit-huge"}, "vit-huge"),
    ({"anchors": "vit-tiny,vit-small", "config": 36}, "configuration id in 0..35"),
    ({"anchors": "vit-tiny,vit-small,vit-base", "config": 71}, "0..70"),
    ({"anchors": "vit-tiny,vit-small,vit-base", "round-trip": True, "config": 181}, "0..180"),
    ({"anchors": "vit-tiny,vit-small", "config": "fastest"}, "must be `best` or a configuration id"),
    ({"anchors": "vit-tiny,vit-small", "config": 3, "max-macs": "8M"}, "exclude each other"),
    ({"anchors": "vit-tiny,vit-small", "max-macs": "lots"}, "stitch.max-macs"),
    ({"anchors": "vit-tiny,vit-small", "max-latency-ms": -1}, "positive number of ms"),
    ({"anchors": "vit-tiny,vit-small", "weights": "a.pt"}, "one per anchor"),
    ({"anchors": "vit-tiny,vit-small", "device": "tpu"}, "device 'tpu'"),
    ({"anchors": "vit-tiny,vit-small", "train-data": "imagenet"}, "unknown data spec"),
    ({"anchors": "vit-tiny,vit-small", "epoch": 2}, "did you mean 'epochs'"),
    ({"anchors": "vit-tiny,vit-small", "kernel": 0}, "stages[0].stitch.kernel"),
    ({}, "stitch.anchors is required"),
])
def test_bad_stitch_recipes_exit_2_with_one_line(tmp_path, cli_runner, stitch, message):
    from edgevit.cli import cli
    doc = {"model": "vit-tiny", "stages": [{"stitch": stitch}, {"export": {"runtime": "onnx"}}]}
    res = cli_runner.invoke(cli, ["pipeline", str(write(tmp_path, doc)), "--check"])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1, res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_device_without_cuda_is_refused_up_front(tmp_path, cli_runner):
    from edgevit.cli import cli
    doc = {"model": "vit-tiny", "stages": [{"stitch": {**STITCH, "device": "cuda"}}]}
    res = cli_runner.invoke(cli, ["pipeline", str(write(tmp_path, doc)), "--check"])
    assert res.exit_code == 2 and "sees no CUDA GPU" in res.output
    assert len(res.output.strip().splitlines()) == 1
    ok = {"model": "vit-tiny", "stages": [{"stitch": {**STITCH, "device": "auto"}}]}
    assert cli_runner.invoke(cli, ["pipeline", str(write(tmp_path, ok)), "--check"]).exit_code == 0


@pytest.mark.slow
def test_quantize_then_stitch_then_export(tmp_path):
    """quantize → stitch (a stitched configuration, by id) → ONNX: the stitch artifact is complete, the
    chosen configuration alone is quantised (the spec re-applied after training) and exported with
    parity, and a re-run resumes every stage."""
    from runtimes.onnx.session import cpu_session
    from edgevit.data import load_data
    from edgevit.pipeline import run
    from edgevit.pipeline.state import load_stage
    doc = {"model": "vit-tiny", "eval-data": "fashion-mnist:200", "latency-iters": 3, "stages": [
        {"quantize": {"fmt": "int", "bits": "w8a8", "calib": "fashion-mnist:64", "keep-float": ["*head"],
                      "eval-limit": 200}},
        {"stitch": {**STITCH, "config": 23}},
        {"export": {"runtime": "onnx", "parity-data": "fashion-mnist:64"}}]}
    run_dir = tmp_path / "run"
    s = run(load_recipe(write(tmp_path, doc)), run_dir)

    art = run_dir / "02-stitch" / "stitch"                          # the whole family's artifact
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["metrics"]["num_configs"] == 36 and (art / "pareto.png").stat().st_size > 1000
    assert (art / "onnx" / "weights.bin").is_file() and (art / "configs.md").is_file()
    chosen = json.loads((art / "configs.json").read_text())[23]
    assert ">" in chosen["name"]                                    # a real stitched route, not an anchor
    report = json.loads((run_dir / "02-stitch" / "report.json").read_text())
    assert report["chosen"]["id"] == 23 and report["device"] == "cpu"
    assert any(n.startswith(f"stitch: configuration 23 {chosen['name']} (chosen by id)") for n in s["notes"])

    assert any(n.startswith("quantisation re-applied after stitch training") for n in s["notes"])
    assert s["quantisation"]["kept_valid_by"].startswith("re-applied")
    rows = {r["runtime"]: r for r in s["rows"]}
    # the pipeline carries the configuration alone: its size is the route's parameters, not the family's
    assert rows["torch"]["size_bytes"] == 4 * chosen["params"]
    assert rows["onnx"]["precision"] == "w8a8" and rows["onnx"]["parity"]["top1_agreement"] >= 0.95

    # the exported graph in onnxruntime against the re-quantised torch configuration
    rec = json.loads((run_dir / "03-export" / "stage.json").read_text())
    state, _ = load_stage(run_dir / "03-export", rec["key"])
    onnx_file = next((Path(rows["onnx"]["path"])).glob("*.onnx"))
    x, _ = load_data("fashion-mnist:64", state.meta.preprocess, split="test", seed=1)
    got = cpu_session(onnx_file).run(None, {"input": x.numpy()})[0]   # exact int8 on any x86
    with torch.no_grad():
        ref = state.qmodel(x).numpy()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.95
    assert np.abs(got - ref).max() < 0.5 * np.abs(ref).max()
    assert state.meta.name == "vit-tiny+vit-small#23"

    again = run(load_recipe(write(tmp_path, doc)), run_dir)          # resume: nothing is redone
    assert [st["status"] for st in again["stages"]] == ["resumed"] * 3
