"""Pipeline stage adapters: rewrite of pruned split sub-models, ragged group sizes, quantize
options passed through to `edgevit quantize`'s own PTQ, and the cross-stage recipe checks."""
from __future__ import annotations

import pytest
import torch
import yaml

from edgevit.errors import UsageError


def _pruned_subvit():
    """A vit-small (4 heads) sub-model whose blocks cover every pruning case: all heads, 3 heads, 1 head, no
    attention, no MLP, a ragged MLP width."""
    from edgevit.models.registry import load_model
    from edgevit.split.subvit import SubViT
    vit, meta = load_model("vit-small")
    torch.manual_seed(0)
    nb, heads, hidden = len(vit.blocks), vit.blocks[0].attn.num_heads, vit.blocks[0].mlp.fc1.out_features
    keep_h = [torch.arange(heads)] * nb
    keep_m = [torch.arange(hidden)] * nb
    keep_h[1], keep_h[2], keep_h[3] = torch.tensor([0, 2, 3]), torch.tensor([1]), torch.tensor([], dtype=torch.long)
    keep_m[2], keep_m[4] = torch.arange(0, hidden, 3), torch.tensor([], dtype=torch.long)
    return SubViT.from_vit(vit, keep_h, keep_m), meta


@pytest.mark.parametrize("split_heads", [False, True])
def test_npu_rewrite_of_pruned_subvit_is_exact(split_heads):
    from edgevit.rewrite.vit import NpuPrunedAttention, NpuPrunedBlock, to_npu_vit
    sub, meta = _pruned_subvit()
    assert sub.blocks[3].attn is None and sub.blocks[4].mlp is None
    npu = to_npu_vit(sub)
    for m in npu.modules():
        if hasattr(m, "split_heads"):
            m.split_heads = split_heads
    assert isinstance(npu.blocks[2].attn, NpuPrunedAttention) and npu.blocks[2].attn.heads == 1
    assert isinstance(npu.blocks[3], NpuPrunedBlock) and npu.blocks[3].attn is None
    x = torch.randn(6, *meta.input_shape[1:])
    with torch.no_grad():
        ref, out = sub(x), npu(x)
    assert (out - ref).abs().max() / ref.abs().max() < 1e-5


def test_rewrite_passes_accept_pruned_subvit():
    """Every npu pass (fold-constants on None branches, static shape, GELU last) runs on the sub-model."""
    from edgevit.rewrite import load_target, rewrite_model
    sub, meta = _pruned_subvit()
    x = torch.randn(8, *meta.input_shape[1:])
    model, report = rewrite_model(sub, load_target("npu"), x, meta.input_shape, gelu_form="op")
    assert report["max_rel_err"] < 1e-4 and [p["pass"] for p in report["passes"]][-1] == "gelu"
    assert model.edgevit_static_shape == tuple(meta.input_shape)


def test_one_head_block_converts_to_tflite_with_parity():
    """litert-torch mis-lowers a size-1 head axis; the token-major one-head form must convert exactly."""
    litert_torch = pytest.importorskip("litert_torch")
    from edgevit.rewrite.vit import to_npu_vit
    sub, meta = _pruned_subvit()
    sub.blocks = sub.blocks[:4]                       # keep it small: full, 3-head, 1-head, no-attention blocks
    npu = to_npu_vit(sub).eval()
    x = torch.randn(1, *meta.input_shape[1:])
    edge = litert_torch.convert(npu, (x,))
    with torch.no_grad():
        ref = npu(x).numpy()
    assert abs(edge(x) - ref).max() < 1e-4


def test_pruned_subvit_keeps_group_scales_and_exports_exactly(tmp_path):
    """Pruned widths (49, 48, a third of the MLP) are not multiples of the group size: the layers keep their
    per-group scales with a short last group, and the ONNX graph computes what the fake-quant model does."""
    import onnxruntime as ort

    import quant
    from runtimes.onnx.quantized import export_quantized_onnx
    from runtimes.onnx.quantspec import spec_from_model
    sub, meta = _pruned_subvit()
    x = torch.randn(4, *meta.input_shape[1:])
    qm = quant.quantize_model(sub, quant.parse_spec("fp4", "w4a6", {"group_size": 32}), x)
    plan = qm.quant_plan
    assert sub.blocks[2].mlp.fc2.in_features % 32 and plan["blocks.2.mlp.fc2"].config.weight.granularity == "group"
    export_quantized_onnx(qm, spec_from_model(qm), (1, *meta.input_shape[1:]), tmp_path / "q.onnx")
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = qm(x).numpy()
    assert (abs(got - ref).max() / abs(ref).max()) < 1e-4 and (got.argmax(-1) == ref.argmax(-1)).all()


def _recipe(tmp_path, stages):
    from edgevit.pipeline import load_recipe
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"model": "vit-tiny", "stages": stages}))
    return load_recipe(p)


def test_quantize_options_reach_edgevit_quantize_ptq(tmp_path):
    """A quantize flag the old adapter refused (fold-bn) now changes what PTQ does."""
    from edgevit.models.registry import load_model
    from edgevit.pipeline.stages import quantize_with
    model, meta = load_model("mobilenet-mini")
    base = {"fmt": "int", "bits": "w8a8", "calib": "fashion-mnist:32"}
    on = _recipe(tmp_path, [{"quantize": base}]).stages[0].options
    off = _recipe(tmp_path, [{"quantize": {**base, "fold-bn": False}}]).stages[0].options
    assert quantize_with(model, meta, on)[2]["graph_fixes"]["fold_bn"]["folded"] > 0    # default for BN models
    assert quantize_with(model, meta, off)[2]["graph_fixes"]["fold_bn"] is False


@pytest.mark.parametrize("stages, message", [
    ([{"quantize": {"fmt": "fp4", "bits": "w4a6"}}, {"split": {"devices": 2, "bits": "w8a8"}}],
     "split.bits/fmt/quantize-fusion"),
    ([{"quantize": {"bits": "auto", "max-drop": 1.0}}, {"split": {"devices": 2}}], "bits auto"),
    ([{"export": {"runtime": "onnx", "precision": "w8a8"}}], "export.precision"),
    ([{"export": {"runtime": "onnx", "weight-scales": "model"}}], "weight-scales"),
    ([{"export": {"graph-form": "integer"}}], "needs a quantize stage"),
    ([{"split": {"devices": 2, "latency": 0}}], "split.latency"),
])
def test_cross_stage_checks_refuse_before_work(tmp_path, stages, message):
    from edgevit.pipeline.run import check
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        check(_recipe(tmp_path, stages))
