"""`rewrite --distill conv`: the UIB student, the distillation loop (seeded, resumable) and the
teacher-vs-student comparison."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgevit.cli import cli
from edgevit.data import load_data
from edgevit.errors import UsageError
from edgevit.models.bundled import FASHION_MNIST_PREPROCESS
from edgevit.models.registry import load_model
from edgevit.rewrite import load_target, rewrite_model
from edgevit.rewrite.checker import check_model
from edgevit.rewrite.distill import DistillRecipe, QuantNoise, distill, token_layout
from edgevit.rewrite.student import UIB, ConvStudent

torch.set_num_threads(1)
SHAPE = (1, 1, 28, 28)
SMALL = DistillRecipe(epochs=1, robust_epochs=1, batch_size=64, hflip=True)


@pytest.fixture(scope="module")
def data():
    train = load_data("fashion-mnist:128", FASHION_MNIST_PREPROCESS, split="train", seed=0)
    test = load_data("fashion-mnist:64", FASHION_MNIST_PREPROCESS, split="test", seed=0)
    return train, test


@pytest.fixture(scope="module")
def teacher():
    return load_model("vit-tiny")[0]


def _student_with_bn_stats() -> ConvStudent:
    torch.manual_seed(0)
    m = ConvStudent().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.2)
    return m


def test_student_is_depthwise_separable_with_bounded_activations():
    m = ConvStudent()
    acts = {type(x) for x in m.modules() if isinstance(x, (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.GELU, nn.SiLU))}
    assert acts == {nn.ReLU6}
    dw = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups == c.in_channels > 1]
    assert len(dw) >= 6 and all(c.kernel_size == (3, 3) for c in dw)
    assert m.forward_features(torch.zeros(2, 1, 28, 28)).shape == (2, 192, 4, 4)   # the teacher's 4×4 patch grid
    assert {(b.conv[0][0].groups > 1) for b in m.features if isinstance(b, UIB)} == {True, False}  # UIB variants


def test_uib_needs_a_depthwise_to_stride():
    with pytest.raises(ValueError, match="depthwise"):
        UIB(8, 8, 2.0, 0, 0, 2, "relu6")


def test_student_rewrite_is_exact_and_npu_clean(data):
    x = data[1][0][:16]
    new, rep = rewrite_model(_student_with_bn_stats(), load_target("qnn-htp"), x, SHAPE)
    assert rep["max_rel_err"] <= 1e-4
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Linear)) for m in new.modules())
    assert check_model(new, SHAPE, load_target("qnn-htp"), compile=False)["violations"] == []


def test_token_layout():
    assert token_layout(17) == (4, True) and token_layout(16) == (4, False)
    with pytest.raises(UsageError, match="square"):
        token_layout(15)


def test_distill_is_seeded_and_resumes(tmp_path, data, teacher):
    train, test = data
    a, rec = distill(teacher, train, test, SMALL, tmp_path / "a", progress=False)
    b, _ = distill(teacher, train, test, SMALL, tmp_path / "b", progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert (tmp_path / "a" / "last.pt").exists() and (tmp_path / "a" / "teacher.pt").exists()
    cache = torch.load(tmp_path / "a" / "teacher.pt", weights_only=True)
    assert cache["logits"].shape == (2, 128, 10) and cache["tokens"].shape == (2, 128, 17, 32)  # image + mirror
    with torch.no_grad():
        direct = teacher(train[0][:4].flip(-1))
    assert torch.allclose(cache["logits"][1, :4], direct, atol=0.15)      # bf16 teacher, mirrored view
    again, rec2 = distill(teacher, train, test, SMALL, tmp_path / "a", progress=False)   # finished: nothing to do
    assert [h["phase"] for h in rec["history"]] == ["distil", "robust"]
    assert rec2["history"] == rec["history"] and rec2["train_s"] < 5
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), again.state_dict().values()))


def test_quant_noise_is_one_quantiser_step():
    lin = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(4))
    x = torch.linspace(0, 255, 4000).reshape(1000, 4)          # range 255 → 8-bit step 1
    noise = QuantNoise(lin, 8, torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = lin(x)
        noise.on = True
        noisy = lin(x)
    d = noisy - clean
    assert d.abs().max() <= 0.5 + 1e-4 and d.std() == pytest.approx(1 / 12 ** 0.5, rel=0.1)
    noise.remove()
    with torch.no_grad():
        assert torch.equal(lin(x), clean)


def test_distill_refuses_another_recipe_in_work_dir(tmp_path, data, teacher):
    train, test = data
    distill(teacher, train, test, SMALL, tmp_path, progress=False)
    with pytest.raises(UsageError, match="another recipe"):
        distill(teacher, train, test, DistillRecipe(epochs=2, batch_size=64), tmp_path, progress=False)


def test_distill_rejects_bad_recipe(tmp_path, data, teacher):
    with pytest.raises(UsageError, match="alpha"):
        distill(teacher, *data, DistillRecipe(alpha=2.0), tmp_path, progress=False)


def test_cli_distill_needs_a_vit(tmp_path):
    r = CliRunner().invoke(cli, ["rewrite", "mobilenet-mini", "--distill", "conv", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "ViT teacher" in r.output and not (tmp_path / "o").exists()
    r = CliRunner().invoke(cli, ["rewrite", "vit-tiny", "--epochs", "3", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--distill" in r.output


@pytest.mark.slow
def test_cli_distill_end_to_end(tmp_path):
    """A short real run: artifact written, student passes the qnn-htp check (and the QNN compiler
    when installed), the comparison covers accuracy, params, latency and W8A8/W8A16 encoder error."""
    out = tmp_path / "student"
    r = CliRunner().invoke(cli, ["rewrite", "vit-tiny", "--distill", "conv", "--epochs", "1",
                                 "--train-data", "fashion-mnist:1024", "--out", str(out)])
    assert r.exit_code == 0, r.output
    files = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.pt", "distill.json", "report.md", "student.safetensors", "robustness.png",
            "manifest.json", "meta.json"} <= files
    rep = json.loads((out / "distill.json").read_text())
    assert rep["check"]["violations"] == 0 and rep["rewrite"]["max_rel_err"] <= 1e-4
    for who in ("teacher", "student"):
        assert rep[who]["params"] > 0 and rep[who]["ort_ms"] > 0 and set(rep[who]["encoder"]) == {"w8a8", "w8a16"}
    assert rep["teacher"]["test_top1"] == pytest.approx(86.43, abs=0.05)     # vit-tiny's record, full test split
    assert rep["student"]["test_top1"] == rep["distill"]["history"][-1]["test_top1"]
    assert not (tmp_path / "student.work").exists()       # work dir removed after success
    r = CliRunner().invoke(cli, ["check", str(out), "--target", "qnn-htp", "--no-compile"])
    assert r.exit_code == 0 and "0 violations" in r.output


def test_interleaved_latency_reports_both_models():
    from edgevit.rewrite.compare import ort_latency_interleaved
    models = {"student": ConvStudent().eval(), "conv": nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU6()).eval()}
    lat = ort_latency_interleaved(models, SHAPE, rounds=2, iters=3, warmup=1)
    assert set(lat["models"]) == {"student", "conv"} and len(lat["loadavg_before"]) == 3
    assert all(v["median_ms"] > 0 and len(v["round_medians_ms"]) == 2 for v in lat["models"].values())
