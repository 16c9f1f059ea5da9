"""edgevit.rewrite: pass equivalence on real Fashion-MNIST inputs, the checker, the SQNR maths."""
from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgevit.data import Preprocess, load_data
from edgevit.errors import UsageError
from edgevit.models.bundled import BUNDLED, FASHION_MNIST_PREPROCESS
from edgevit.rewrite import PASS_NAMES, load_target, rewrite_model
from edgevit.rewrite.checker import check_model
from edgevit.rewrite.robustness import (only_layer, precision_spec, quantize_for_report, rel_rms, robustness,
                                        sqnr_from_rel_rms)

torch.set_num_threads(1)
SHAPE = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def fmnist():
    return load_data("fashion-mnist:32", FASHION_MNIST_PREPROCESS, split="test", seed=0)


def _bundled(name: str) -> nn.Module:
    """Architecture with seeded random weights; BN statistics made non-trivial so folding is exercised."""
    torch.manual_seed(0)
    m = BUNDLED[name]["factory"]().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.3)
    return m


ONLY = {  # pass → the passes it needs before it, and the report field that proves it did something
    "fold-bn": ([], "folded"), "conv-layout": ([], "vit"), "split-heads": (["conv-layout"], "attention_blocks"),
    "fold-constants": (["conv-layout"], "scale"), "gelu": ([], "replaced"), "static-shape": ([], "input_shape"),
}


@pytest.mark.parametrize("name,pass_name", [("vit-tiny", p) for p in PASS_NAMES if p != "fold-bn"]
                         + [("mobilenet-mini", "fold-bn"), ("mobilenet-mini", "conv-layout")])
def test_each_pass_is_equivalent(fmnist, name, pass_name):
    x, y = fmnist
    needs, field = ONLY[pass_name]
    disable = [p for p in PASS_NAMES if p != pass_name and p not in needs]
    _, rep = rewrite_model(_bundled(name), load_target("qnn-htp"), x, SHAPE, disable=disable, y=y)
    step = next(s for s in rep["passes"] if s["pass"] == pass_name)
    assert step["enabled"] and rep["max_rel_err"] <= 1e-4
    if name == "mobilenet-mini" and pass_name == "conv-layout":
        assert step["linear_to_conv"] == 1
    else:
        assert step[field]


def test_full_rewrite_is_npu_shaped(fmnist):
    x, _ = fmnist
    new, rep = rewrite_model(_bundled("vit-tiny"), load_target("qnn-htp"), x, SHAPE)
    assert rep["max_rel_err"] <= 1e-4
    assert not any(isinstance(m, (nn.Linear, nn.LayerNorm)) for m in new.modules())
    ranks = []
    hooks = [m.register_forward_hook(lambda _, __, o: ranks.append(o.dim())) for m in new.modules()]
    with torch.no_grad():
        new(x[:2])
    for h in hooks:
        h.remove()
    assert max(ranks) <= 4


def test_tanh_gelu_reports_accuracy_change(fmnist):
    x, y = fmnist
    _, rep = rewrite_model(_bundled("vit-tiny"), load_target("ane"), x, SHAPE, y=y)
    step = next(s for s in rep["passes"] if s["pass"] == "gelu")
    assert step["form"] == "tanh" and step["replaced"] == 12
    assert 0 < step["max_rel_err"] < 0.05 and "top1_after" in step


def test_unknown_pass_is_rejected(fmnist):
    with pytest.raises(UsageError, match="unknown pass"):
        rewrite_model(_bundled("vit-tiny"), load_target("qnn-htp"), fmnist[0], SHAPE, disable=["nope"])


def test_unknown_target_is_rejected():
    with pytest.raises(UsageError, match="unknown target"):
        load_target("tpu9000")


class BadGraph(nn.Module):
    """Every rule broken once: rank 5, Erf, a large tensor, dynamic batch (exported that way)."""

    def forward(self, x):
        b = x.shape[0]
        five = x.reshape(b, 1, 1, 28, 28) * 2           # rank 5
        big = five.reshape(-1, 784, 1) * torch.ones(1, 1, 4096)     # 12.8 MB at fp32
        return torch.erf(big.sum(-1))


def test_checker_finds_known_violations():
    res = check_model(BadGraph(), SHAPE, load_target("qnn-htp"), compile=False)
    rules = {(v["rule"], v["fix"]) for v in res["violations"]}
    assert ("rank", "conv-layout") in rules and ("dynamic", "static-shape") in rules
    assert ("op", "gelu") in rules and any(r == "size" for r, _ in rules)
    assert all(v["node"] for v in res["violations"])


def test_checker_original_vs_rewritten(fmnist):
    x, _ = fmnist
    model = _bundled("vit-tiny")
    target = load_target("qnn-htp")
    before = check_model(model, SHAPE, target, compile=False)
    assert {v["op"] for v in before["violations"] if v["rule"] == "op"} >= {"Erf"}
    assert any(v["rule"] == "rank" for v in before["violations"])
    new, _ = rewrite_model(model, target, x, SHAPE)
    assert check_model(new, SHAPE, target, compile=False)["violations"] == []


def test_sqnr_hand_computed():
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)   # ‖ref‖ = 5
    test = torch.tensor([3.0, 4.05], dtype=torch.float64)  # ‖err‖ = 0.05 → relRMS 1 % → 40 dB
    assert rel_rms(ref, test) == pytest.approx(0.01)
    assert sqnr_from_rel_rms(rel_rms(ref, test)) == pytest.approx(40.0)
    from edgevit.report.metrics import sqnr_db
    assert sqnr_db(ref, test) == pytest.approx(40.0)
    assert math.isinf(sqnr_from_rel_rms(0.0))


def test_precision_spec_is_quant_int():
    spec = precision_spec("w8a16")
    assert spec.default.weight.fmt == "int8" and spec.default.weight.granularity == "channel"
    assert spec.default.act.fmt == "uint16" and spec.default.act.granularity == "tensor"
    assert spec.default.weight.observer == spec.default.act.observer == "minmax"
    with pytest.raises(UsageError, match="w9x3"):
        precision_spec("w9x3")


def test_report_quantises_the_same_points_before_and_after_rewrite(fmnist):
    """quant/ swaps Linear/Conv/attention/LayerNorm/GELU of the original; the rewritten graph's
    ChannelLayerNorm and Gelu op get quant's ActQuantizer here: the same quantised layers (Linear → 1×1 conv)."""
    import quant
    x, _ = fmnist
    model = _bundled("vit-tiny")
    new, _ = rewrite_model(model, load_target("qnn-htp"), x, SHAPE)
    kinds = []
    for m in (model, new):
        q = quantize_for_report(m, precision_spec("w8a8"), x[:16])
        kinds.append(sorted({"linear": "conv"}.get(l.quant_kind, l.quant_kind) for _, l in quant.quantized_layers(q)))
    assert kinds[0] == kinds[1] and kinds[0].count("norm") == 25 and kinds[0].count("gelu") == 12


def test_only_layer_restores_quantisers(fmnist):
    x, _ = fmnist
    q = quantize_for_report(_bundled("vit-tiny"), precision_spec("w8a8"), x[:16])
    with torch.no_grad():
        full = q(x[:4])
        with only_layer(q, "blocks.0.attn.qkv"):
            one = q(x[:4])
            assert q.blocks[1].attn.qkv.weight_quant is None
        again = q(x[:4])
    assert torch.equal(full, again) and not torch.equal(full, one)


def test_robustness_report(fmnist):
    x, _ = fmnist
    new, _ = rewrite_model(_bundled("vit-tiny"), load_target("qnn-htp"), x, SHAPE)
    rep = robustness(new, x[:16], x[:8], precisions=("w8a16", "w4a16"), top_k=2)
    p8, p4 = rep["precisions"]["w8a16"], rep["precisions"]["w4a16"]
    assert rep["encoder"] == "norm" and p8["encoder_sqnr_db"] > p4["encoder_sqnr_db"] > 0
    assert len(p8["dominant"]) == 2 and set(p8["layers"]) == set(rep["layers"])


def test_cli_rejects_bad_input(tmp_path):
    from edgevit.cli import cli
    r = CliRunner().invoke(cli, ["rewrite", "vit-tiny", "--disable", "nope", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown pass" in r.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    r = CliRunner().invoke(cli, ["rewrite", "vit-tiny", "--out", str(tmp_path / "full")])
    assert r.exit_code == 2 and (tmp_path / "full" / "x").read_text() == "keep"
    r = CliRunner().invoke(cli, ["rewrite", "--list-passes"])
    assert r.exit_code == 0 and all(p in r.output for p in PASS_NAMES)


def _timm(arch, **kw):
    from edgevit.models.timm_models import import_timm
    try:
        timm = import_timm()
    except UsageError:
        pytest.skip("timm not installed (extra `timm`)")
    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, **kw).eval()


@pytest.mark.parametrize("arch,kw,size", [
    ("deit_tiny_patch16_224", {}, 224),
    ("deit3_small_patch16_224", {"img_size": 112, "init_values": 0.1}, 112),   # LayerScale, no_embed_class
    ("mobilenetv3_small_100", {}, 96),                                         # BatchNormAct2d, hard-swish
])
def test_timm_architectures(arch, kw, size):
    model = _timm(arch, **kw)
    x, _ = load_data("fashion-mnist:2", Preprocess(size, 3, (0.5,) * 3, (0.25,) * 3), split="test")
    new, rep = rewrite_model(model, load_target("qnn-htp"), x, (1, 3, size, size))
    assert rep["max_rel_err"] <= 1e-4
    assert not any(isinstance(m, (nn.Linear, nn.BatchNorm2d)) and type(m) in (nn.Linear, nn.BatchNorm2d)
                   for m in new.modules())
