"""CLI of the PTQ toolbox: bad --bits auto setups exit 2 before any work; an end-to-end auto run (slow)
writes a recipe that reproduces its per-layer assignment and a checkpoint that loads back."""
import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from edgevit.cli import cli

torch.set_num_threads(1)


def run(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("args,message", [
    (["--bits", "auto"], "exactly one budget"),
    (["--bits", "auto", "--max-size", "1MB", "--max-drop", "1"], "exactly one budget"),
    (["--bits", "auto", "--max-size", "lots"], "bad size"),
    (["--bits", "auto", "--max-size", "1MB", "--candidates", "int:w8a8,w4"], "FAMILY:wNaM"),
    (["--bits", "w8a8", "--max-size", "1MB"], "needs --bits auto"),
])
def test_bad_auto_setup_exits_2(tmp_path, args, message):
    r = run("quantize", "mobilenet-mini", "--out", str(tmp_path / "o"), *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and not (tmp_path / "o").exists()


def test_analyze_rejects_bad_bits(tmp_path):
    r = run("analyze", "mobilenet-mini", "--bits", "w9a8", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "2-8 bits" in r.output


@pytest.mark.slow
def test_auto_precision_end_to_end(tmp_path):
    out = tmp_path / "q"
    r = run("quantize", "mobilenet-mini", "--bits", "auto", "--max-size", "120kB", "--candidates", "int:w8a8,int:w4a8",
            "--calib", "fashion-mnist:64", "--eval-limit", "200", "--out", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    mp = report["mixed_precision"]
    assert mp["chosen"]["size_bytes"] <= 120e3   # the uniform W4A8 file alone is 106.5 kB
    assert (out / "weights.safetensors").stat().st_size == mp["chosen"]["size_bytes"]   # the promise is the file
    assert mp["chosen"]["size_bytes"] <= mp["chosen"]["modelled_bytes"]
    assert report["graph_fixes"]["fold_bn"]["folded"] == 25
    assert (out / "pareto.png").stat().st_size > 1000
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())["quantize"]
    assert recipe["layers"]                                      # a real mix, pinned per layer
    from edgevit.ptq import load_checkpoint
    q, _ = load_checkpoint(str(out))
    bits = {m.weight_quant.fmt.name for _, m in __import__("quant").quantized_layers(q)}
    assert bits == {"int8", "int4"}
    # the cost model's latency travels into the artifact; bench shows it next to the measured one
    r = run("export", str(out), "--runtime", "onnx", "--out", str(tmp_path / "a"), "--parity-data", "fashion-mnist:64")
    assert r.exit_code == 0, r.output
    r = run("bench", str(tmp_path / "a"), "--iters", "5", "--warmup", "1", "--json")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)[0]
    assert row["modelled_latency_ms"] == pytest.approx(mp["chosen"]["latency_ms"]) and row["p50_ms"] > 0
    # the budget holds for the ONNX artifact's model file too (its graph is costed by exporting the pick)
    assert (tmp_path / "a" / "model.onnx").stat().st_size == mp["chosen"]["onnx_model_bytes"] <= 120e3


@pytest.mark.slow
def test_analyze_end_to_end(tmp_path):
    r = run("analyze", "mobilenet-mini", "--bits", "w2a8", "--calib", "fashion-mnist:64", "--eval-limit", "100",
            "--no-leave-one-out", "--out", str(tmp_path / "s"))
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert len(res["layers"]) == 26 and (tmp_path / "s" / "sensitivity.png").exists()
    assert max(row["only_drop"] for row in res["layers"]) > 0
