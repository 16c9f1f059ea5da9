"""Class-wise structured pruning gives genuinely smaller dense modules that respect the budget."""
import pytest
import torch
from torch import nn

from edgevit.errors import UsageError
from edgevit.models.bundled import BUNDLED
from edgevit.split.cost import VitDims, subvit_cost, vit_cost
from edgevit.split.prune import (base_params, group_logits, group_targets, importance_scores, min_cost, min_params,
                                 prune_for_subset, select_units, subvit_params)
from edgevit.split.subvit import SubViT, check_vit


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return BUNDLED["vit-tiny"]["factory"]().eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 1, 28, 28, generator=g), torch.arange(40) % 10


def test_full_copy_matches_the_original(vit, data):
    x, _ = data
    full = SubViT.from_vit(vit)
    torch.testing.assert_close(full(x[:8]), vit(x[:8]), rtol=0, atol=1e-5)


def test_pruned_module_is_dense_smaller_and_within_budget(vit, data):
    x, y = data
    budget = int(0.25 * sum(p.numel() for p in vit.parameters()))
    sub, info = prune_for_subset(vit, torch.tensor([0, 2, 6]), budget, x, y, 10, score_images=32)
    n = sum(p.numel() for p in sub.parameters())
    assert n <= budget and n == info["params"]
    assert n == subvit_params(32, 16, torch.tensor(info["heads"]), torch.tensor(info["hidden"]),
                              base_params(vit, 4))
    for blk, h, m in zip(sub.blocks, info["heads"], info["hidden"]):
        if h:
            assert blk.attn.qkv.weight.shape == (3 * 16 * h, 32) and blk.attn.proj.weight.shape == (32, 16 * h)
        else:
            assert blk.attn is None
        if m:
            assert blk.mlp.fc1.weight.shape == (m, 32) and blk.mlp.fc2.weight.shape == (32, m)
    assert sum(info["hidden"]) < 12 * 128 and sub(x[:2]).shape == (2, 4)
    assert not any(isinstance(mod, nn.Linear) and (mod.weight == 0).all(dim=1).any() for mod in sub.modules())


def test_sliced_heads_compute_what_the_original_heads_did(vit, data):
    """Keeping head 1 of every block equals the original with head 0 zeroed out (slicing, not masking)."""
    x, _ = data
    keep = [torch.tensor([1])] * 12
    sub = SubViT.from_vit(vit, keep_heads=keep)
    masked = SubViT.from_vit(vit)
    for b in masked.blocks:
        b.attn.gate = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(sub(x[:4]), masked(x[:4]), rtol=0, atol=1e-5)


def test_importance_depends_on_the_class_subset(vit, data):
    x, y = data
    h1, u1, b1 = importance_scores(vit, x, y, torch.tensor([0, 1]), 10)
    h2, u2, _ = importance_scores(vit, x, y, torch.tensor([7, 8, 9]), 10)
    assert len(h1) == 12 and h1[0].shape == (2,) and u1[0].shape == (128,) and b1.shape == (12, 2)
    assert all((s >= 0).all() for s in h1 + u1) and (b1 > 0).all()
    assert not torch.allclose(torch.cat(u1), torch.cat(u2))


DIMS = VitDims(dim=8, head_dim=4, tokens=5, in_chans=1, patch=2, depth=2)


def test_select_units_keeps_the_most_important():
    heads = [torch.tensor([0.1, 5.0]), torch.tensor([3.0, 0.2])]
    units = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])]
    branches = torch.ones(2, 2)
    base = 100
    budget = int(subvit_params(8, 4, torch.tensor([1, 1]), torch.tensor([1, 1]), base))
    kh, km = select_units(heads, units, branches, DIMS, base, 3, budget)
    assert [k.tolist() for k in kh] == [[1], [0]] and [k.tolist() for k in km] == [[0], [1]]


def test_cost_budget_drops_the_least_important_whole_branches():
    """With room for two branches only, the two highest-scoring branches survive, each kept whole."""
    heads = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])]
    units = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])]
    branches = torch.tensor([[0.1, 5.0], [4.0, 0.2]])          # block0 MLP and block1 attention matter
    full_h, full_m = torch.tensor([0, 2]), torch.tensor([2, 0])
    cost = float(subvit_cost(DIMS, full_h, full_m, 3))
    kh, km = select_units(heads, units, branches, DIMS, 0, 3, 10 ** 9, cost)
    assert [len(k) for k in kh] == [0, 2] and [len(k) for k in km] == [2, 0]
    assert select_units(heads, units, branches, DIMS, 0, 3, 10 ** 9, cost_budget=1.0) is None


def test_cost_model_counts_branches_and_matches_the_full_model(vit):
    d = VitDims.of(vit)
    full = subvit_cost(d, torch.full((12,), 2), torch.full((12,), 128), 10)
    assert int(full) == vit_cost(vit)
    one_block = subvit_cost(d, torch.tensor([2] + [0] * 11), torch.tensor([128] + [0] * 11), 10)
    thin = subvit_cost(d, torch.full((12,), 1), torch.full((12,), 1), 10)
    assert one_block < thin < full        # dropping branches saves more than thinning all of them
    assert 0 < min_cost(vit, 4) < one_block


def test_dropped_branches_remove_graph_ops(vit, tmp_path):
    """What the cost model assumes: a dropped branch takes its kernels out of the exported graph."""
    import onnx
    from runtimes.onnx import export_onnx
    keep_all = SubViT.from_vit(vit)
    half = SubViT.from_vit(vit, [torch.arange(2)] * 6 + [torch.arange(0)] * 6,
                           [torch.arange(128)] * 6 + [torch.arange(0)] * 6)
    n = [len(onnx.load(str(export_onnx(m, (1, 1, 28, 28), tmp_path / f"{i}.onnx"))).graph.node)
         for i, m in enumerate((keep_all, half))]
    assert n[1] < 0.6 * n[0]


def test_latency_budget_prunes_whole_branches(vit, data):
    x, y = data
    budget = sum(p.numel() for p in vit.parameters())
    cost = 0.3 * vit_cost(vit)
    sub, info = prune_for_subset(vit, torch.tensor([0, 2, 6]), budget, x, y, 10, score_images=32, cost_budget=cost)
    assert info["cost"] <= cost and info["branches"] < 24
    assert sum(b.attn is None for b in sub.blocks) + sum(b.mlp is None for b in sub.blocks) == 24 - info["branches"]


def test_group_logits_and_targets():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    g = group_logits(logits, torch.tensor([2, 0]))
    torch.testing.assert_close(g.softmax(-1), torch.tensor([[0.3, 0.1, 0.6]]))
    assert group_targets(torch.tensor([0, 1, 2, 3]), torch.tensor([2, 0]), 4).tolist() == [1, 2, 0, 2]


def test_min_params_below_full(vit):
    assert 0 < min_params(vit, 4) < sum(p.numel() for p in vit.parameters()) // 10


def test_non_vit_is_rejected():
    with pytest.raises(UsageError, match="ViT"):
        check_vit(BUNDLED["mobilenet-mini"]["factory"]())
