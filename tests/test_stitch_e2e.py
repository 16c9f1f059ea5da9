"""End to end on the bundled family (needs the committed vit-tiny / vit-small checkpoints)."""
import json

import numpy as np
import pytest
import torch

from edgevit.cli import cli


@pytest.mark.slow
def test_stitch_cli_end_to_end(cli_runner, tmp_path):
    out = tmp_path / "stitch"
    args = ["stitch", "--anchors", "vit-small,vit-tiny", "--epochs", "1", "--train-data", "fashion-mnist:256",
            "--eval-data", "fashion-mnist:500", "--latency-iters", "3", "--out", str(out),
            "--work-dir", str(tmp_path / "work"), "--device", "cpu"]
    result = cli_runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    configs = manifest["configs"]
    assert len(configs) == 2 + 34 and manifest["metrics"]["num_configs"] == 36
    assert (out / "pareto.png").stat().st_size > 1000 and (out / "configs.md").exists()
    assert manifest["metrics"]["onnx_vs_anchors"] < 1.1
    assert manifest["metrics"]["train"]["device"] == "cpu"
    train = manifest["metrics"]["train"]                             # the default schedule: warm-up, then joint
    assert [h["phase"] for h in train["history"]] == ["warmup", "joint"] and train["recipe"]["anchor_lr_scale"] > 0
    anchors = [c for c in configs if c["is_anchor"]]
    assert anchors[0]["macs"] < anchors[1]["macs"] and all(c["file"] for c in anchors)
    # the same command again refuses to overwrite
    again = cli_runner.invoke(cli, args)
    assert again.exit_code == 2 and "already exists" in again.output

    result = cli_runner.invoke(cli, ["stitch", "select", str(out), "--max-macs", "6M", "--json"])
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.output)
    assert chosen["macs"] <= 6e6 and chosen["top1"] == max(c["top1"] for c in configs if c["macs"] <= 6e6)

    # run-time switching in torch on the reloaded model, matching the shipped ONNX graph
    import onnxruntime as ort
    from edgevit.data import load_data
    from edgevit.stitch.pipeline import load_stitched
    model, index = load_stitched(out)
    x, _ = load_data("fashion-mnist:8", __import__("edgevit.models.bundled", fromlist=["x"]).FASHION_MNIST_PREPROCESS)
    for c in [c for c in configs if c["file"]][:4]:
        model.set_config(c["id"])
        with torch.no_grad():
            ref = model(x).numpy()
        got = ort.InferenceSession(str(out / c["file"])).run(None, {"input": x.numpy()})[0]
        assert np.abs(got - ref).max() < 1e-4


@pytest.mark.slow
def test_vit_stitch_recipe_hands_a_stitched_configuration(tmp_path):
    """recipes/vit-stitch.yaml (large→small routes, 1 + 3 epochs on 60k images, `max-macs: 8M`): the
    stitch stage selects a stitched configuration, not vit-tiny (select only passes over vit-tiny, the
    cheapest configuration, for a more accurate one), and the later stages get that route (about 3 min)."""
    from pathlib import Path

    from edgevit.pipeline import load_recipe, run
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "vit-stitch.yaml")
    summary = run(recipe, tmp_path / "run")
    chosen = json.loads((tmp_path / "run" / "01-stitch" / "report.json").read_text())["chosen"]
    assert not chosen["is_anchor"] and ">" in chosen["name"] and chosen["macs"] <= 8e6
    assert any(n.startswith(f"stitch: configuration {chosen['id']} {chosen['name']}") for n in summary["notes"])
