"""`edgevit quantize`: bad input exits 2 before any work; end-to-end runs write a loadable checkpoint."""
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import quant
from edgevit.cli import cli
from edgevit.models.bundled import BUNDLED

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random vit-tiny weights: the CLI path without waiting for trained checkpoints."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "vit-tiny.safetensors"
    save_file(BUNDLED["vit-tiny"]["factory"]().state_dict(), str(path))
    return str(path)


def run(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("args,message", [
    (["--bits", "w9a3"], "2-8 bits"),
    (["--fmt", "fp4", "--bits", "w8a8"], "4-bit weights"),
    (["--keep-float", "no.such.layer"], "matches no quantisable layer"),
    (["--calib", "imagenet:5"], "unknown data spec"),
    (["--fmt", "fp9"], "Invalid value"),
])
def test_bad_input_exits_2_with_one_line(weights, tmp_path, args, message):
    r = run("quantize", "vit-tiny", "--weights", weights, "--out", str(tmp_path / "o"), *args)
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "o").exists()


def test_bad_recipe_exits_2(weights, tmp_path):
    (tmp_path / "r.yaml").write_text("layers: {blocks.0: {weight_format: e9m9}}\n")
    r = run("quantize", "vit-tiny", "--weights", weights, "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "E9M9" in r.output


def test_existing_out_is_not_overwritten_without_force(weights, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("keep")
    r = run("quantize", "vit-tiny", "--weights", weights, "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "--overwrite" in r.output and (tmp_path / "o" / "x").read_text() == "keep"


def test_one_overwrite_flag_everywhere_force_a_hidden_alias(cli_runner):
    from edgevit.cli import cli
    for command in ("quantize", "analyze", "export", "split", "stitch"):
        text = cli_runner.invoke(cli, [command, "--help"]).output
        assert "--overwrite" in text and "--force" not in text, command
    r = cli_runner.invoke(cli, ["quantize", "vit-tiny", "--bits", "w9a3", "--force", "--out", "x"])
    assert r.exit_code == 2 and "no such option" not in r.output.lower()    # --force is still accepted


@pytest.mark.slow
def test_end_to_end_writes_checkpoint_and_report(weights, tmp_path):
    out = tmp_path / "q"
    r = run("quantize", "vit-tiny", "--weights", weights, "--fmt", "fp4", "--bits", "w4a6",
            "--calib", "fashion-mnist:64", "--eval-limit", "200", "--keep-float", "head", "--out", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["eval"]["images"] == 200 and 0 <= report["eval"]["quant_top1"] <= 100
    assert report["size"]["total_bytes"] < 0.3 * report["fp32_bytes"]
    assert all(row["layer"] != "head" for row in report["layers"])
    cfg = quant.read_config(out)
    assert cfg["model"]["registry_name"] == "vit-tiny" and cfg["spec"]["keep_float"] == ["head"]
    from edgevit.ptq import load_checkpoint
    q, meta = load_checkpoint(str(out))
    assert q.blocks[0].attn.qkv.weight_quant.fmt.name == "e2m1" and meta.history[-1]["stage"] == "quantize"
    d = q.blocks[0].attn.qkv.export_descriptor()
    assert d["fmt"] == "e2m1" and d["act"]["granularity"] == "per-token" and d["act"]["fmt"] == "e2m3"
    rows, groups = d["scale"].shape
    w = (d["q"].reshape(rows, groups, -1) * d["scale"].unsqueeze(-1)).reshape(d["q"].shape)
    assert torch.equal(w, q.blocks[0].attn.qkv.qweight())      # W = q · scale, exactly


@pytest.mark.slow
def test_trained_vit_small_int8_stays_close_to_float(tmp_path):
    """Needs the bundled vit-small checkpoint (edgevit/models/weights)."""
    from edgevit.models.registry import load_model
    load_model("vit-small")
    r = run("quantize", "vit-small", "--fmt", "int", "--bits", "w8a8", "--calib", "fashion-mnist:128",
            "--eval-limit", "1000", "--out", str(tmp_path / "q"))
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "q" / "report.json").read_text())["eval"]
    assert ev["float_top1"] > 80 and ev["quant_top1"] > ev["float_top1"] - 2.0
