"""The QNN HTP compiler as ground truth (slow: quantises and compiles on the emulated HTP)."""
from __future__ import annotations

import pytest
import torch

from edgevit.data import Preprocess, load_data
from edgevit.errors import UsageError
from edgevit.models.bundled import BUNDLED, FASHION_MNIST_PREPROCESS
from edgevit.rewrite import load_target, rewrite_model
from edgevit.rewrite.checker import check_model, total_violations

pytestmark = pytest.mark.slow
torch.set_num_threads(1)
SHAPE = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def qnn():
    from runtimes.qnn import qnn_available
    if not qnn_available():
        pytest.skip("onnxruntime-qnn not installed (extra `qnn`)")
    return load_target("qnn-htp")


@pytest.mark.parametrize("name", ["vit-tiny", "mobilenet-mini"])
def test_htp_places_every_node_after_rewrite(qnn, name):
    torch.manual_seed(0)
    model = BUNDLED[name]["factory"]().eval()
    x, _ = load_data("fashion-mnist:16", FASHION_MNIST_PREPROCESS, split="test")
    new, _ = rewrite_model(model, qnn, x, SHAPE)
    res = check_model(new, SHAPE, qnn, x[:4].numpy())
    assert res["qnn"]["finalized"] and res["qnn"]["refused"] == [] and total_violations(res) == 0


def test_htp_refuses_erf_gelu(qnn):
    torch.manual_seed(0)
    model = BUNDLED["vit-tiny"]["factory"]().eval()
    x, _ = load_data("fashion-mnist:16", FASHION_MNIST_PREPROCESS, split="test")
    new, _ = rewrite_model(model, qnn, x, SHAPE, disable=["gelu"])     # static, NPU layout, but erf-GELU
    res = check_model(new, SHAPE, qnn, x[:4].numpy())
    refused = res["qnn"]["refused"]
    assert not res["qnn"]["finalized"] and {v["op"] for v in refused} == {"Erf"} and len(refused) == 12
    assert all(v["fix"] == "gelu" for v in refused)


def test_timm_deit_tiny_zero_rule_violations(qnn):
    from edgevit.models.timm_models import import_timm
    try:
        timm = import_timm()
    except UsageError:
        pytest.skip("timm not installed")
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    x, _ = load_data("fashion-mnist:2", Preprocess(224, 3, (0.5,) * 3, (0.25,) * 3), split="test")
    new, rep = rewrite_model(model, qnn, x, (1, 3, 224, 224))
    res = check_model(new, (1, 3, 224, 224), qnn, compile=False)   # HTP emulation at 224² takes minutes:
    assert rep["max_rel_err"] <= 1e-4 and total_violations(res) == 0  # benchmarks/rewrite_report.py compiles it


def test_trained_vit_tiny_numbers(qnn):
    """The issue's numbers on the trained checkpoint (skips until it is committed)."""
    from edgevit.models.bundled import checkpoint_path
    if not checkpoint_path("vit-tiny").exists():
        pytest.skip("vit-tiny checkpoint not trained yet")
    from edgevit.models.registry import load_model
    from edgevit.rewrite.robustness import robustness
    model, meta = load_model("vit-tiny")
    x, _ = load_data("fashion-mnist:256", meta.preprocess, split="test")
    cal, _ = load_data("fashion-mnist:128", meta.preprocess, split="train")
    new, rep = rewrite_model(model, qnn, x, meta.input_shape)
    assert rep["max_rel_err"] <= 1e-4
    assert total_violations(check_model(new, meta.input_shape, qnn, cal[:8].numpy())) == 0
    r = robustness(new, cal, x[:64], precisions=("w8a16",), top_k=1)
    assert r["precisions"]["w8a16"]["encoder_sqnr_db"] >= 40.0
