"""Block reconstruction: unit discovery, loss goes down, checkpoints carry the learned rounding, CLI."""
import json

import pytest
import torch

import quant
from edgevit.models.bundled import BUNDLED
from edgevit.models.vit import VisionTransformer
from quant.reconstruct import Cache, ReconConfig, find_units, quantize_with_method, reconstruct

torch.set_num_threads(1)
FAST = ReconConfig(iters=60, batch_size=16, lr=2e-2)



@pytest.fixture(scope="module")
def vit():
    """A 3-block ViT: the mechanics are those of the bundled ones, at a fraction of the cost."""
    torch.manual_seed(0)
    return VisionTransformer(embed_dim=32, depth=3, num_heads=2).eval()


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    m = BUNDLED["mobilenet-mini"]["factory"]().eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture(scope="module")
def x():
    return torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_units_are_blocks_for_brecq_and_layers_for_adaround(vit, cnn, x):
    q = quant.quantize_model(vit, quant.parse_spec("int", "w4a8"), x)
    blocks = [u.name for u in find_units(q, "brecq")]
    assert blocks == ["patch_embed.proj", *(f"blocks.{i}" for i in range(len(vit.blocks))), "head"]
    layers = find_units(q, "adaround")
    assert len(layers) == sum(1 for _, m in quant.quantized_layers(q) if getattr(m, "weight_quant", None))
    qc = quant.quantize_model(cnn, quant.parse_spec("int", "w4a8"), x)
    first = find_units(qc, "adaround")[0]
    assert first.names == ["features.0.0", "features.0.1", "features.0.2"]   # conv + BN + ReLU6
    assert find_units(qc, "brecq")[0].names == ["features.0"]


@pytest.mark.parametrize("fmt,bits,method", [("int", "w4a8", "brecq"), ("fp4", "w4a6", "brecq"),
                                             ("int", "w4a8", "adaround"), ("mxfp4", "w4a8", "brecq")])
def test_reconstruction_lowers_the_loss_of_every_unit_on_average(vit, x, fmt, bits, method):
    spec = quant.parse_spec(fmt, bits, {"group_size": 32} if fmt == "fp4" else None)
    q = quant.quantize_model(vit, spec, x)
    report = reconstruct(q, vit, x, method, FAST)
    before = sum(r["loss_rtn"] for r in report["units"])
    after = sum(r["loss_after"] for r in report["units"])
    assert after < before
    assert all(m.weight_quant.rounding is None for _, m in quant.quantized_layers(q) if getattr(m, "weight_quant", None))
    assert any(r["flipped"] > 0 for r in report["units"])


def test_cnn_brecq_with_static_activations_and_disk_cache(cnn, x):
    spec = quant.parse_spec("int", "w4a8")
    q = quant.quantize_model(cnn, spec, x)
    report = reconstruct(q, cnn, x, "brecq", ReconConfig(iters=30, batch_size=16, cache_mb=0))
    assert all(r["cache_on_disk"] for r in report["units"])
    assert sum(r["loss_after"] for r in report["units"]) < sum(r["loss_rtn"] for r in report["units"])


def test_checkpoint_round_trip_keeps_learned_rounding(vit, x, tmp_path):
    q, rep = quantize_with_method(vit, quant.parse_spec("fp4", "w4a6"), x, "brecq", ReconConfig(iters=20))
    quant.save_quantized(q, tmp_path / "ck")
    q2 = quant.load_quantized(tmp_path / "ck", vit)
    assert torch.equal(q(x[:8]), q2(x[:8]))
    assert rep["config"]["iters"] == 20


def test_same_seed_same_result(vit, x):
    outs = []
    for _ in range(2):
        q, _ = quantize_with_method(vit, quant.parse_spec("int", "w4a8"), x, "adaround", ReconConfig(iters=15))
        outs.append(q(x[:4]))
    assert torch.equal(*outs)


def test_bad_knobs_are_spec_errors():
    with pytest.raises(quant.SpecError, match="unknown reconstruction key"):
        ReconConfig.from_dict({"iterations": 5})
    with pytest.raises(quant.SpecError, match="warmup"):
        ReconConfig.from_dict({"warmup": 1.5})
    with pytest.raises(quant.SpecError, match="bad value"):
        ReconConfig.from_dict({"iters": "many"})
    assert ReconConfig.from_dict({"iters": "7"}).iters == 7


def test_cache_bound_switches_to_disk(tmp_path):
    assert not Cache(4, (8,), 1 << 20, tmp_path).on_disk
    assert Cache(4, (8,), 16, tmp_path).on_disk


def test_cli_rejects_bad_method_combinations_before_work(cli_runner, tmp_path):
    from edgevit.cli import cli
    r = cli_runner.invoke(cli, ["quantize", "vit-tiny", "--method", "gptq", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--backend brevitas" in r.output
    recipe = tmp_path / "r.yaml"
    recipe.write_text("reconstruction: {iters: 0}\n")
    r = cli_runner.invoke(cli, ["quantize", "vit-tiny", "--method", "brecq", "--recipe", str(recipe),
                                "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "iters" in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_brecq_end_to_end(cli_runner, tmp_path):
    from edgevit.cli import cli
    recipe = tmp_path / "r.yaml"
    recipe.write_text("reconstruction: {iters: 40, batch_size: 16}\n")
    r = cli_runner.invoke(cli, ["quantize", "vit-tiny", "--fmt", "fp4", "--bits", "w4a6", "--method", "brecq",
                                "--recipe", str(recipe), "--calib", "fashion-mnist:64", "--eval-limit", "200",
                                "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["method"] == "brecq" and report["method_report"]["config"]["iters"] == 40
    assert report["eval"]["quant_top1"] > 60
