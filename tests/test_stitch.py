"""edgevit.stitch: enumeration counts, LS init, routing, switching, training mechanics, export parity."""
import copy
import json

import numpy as np
import pytest
import torch

from edgevit.models.vit import VisionTransformer
from edgevit.stitch.anchors import block_inputs
from edgevit.stitch.evaluate import config_macs, evaluate_configs, parse_amount, pareto_front, select
from edgevit.stitch.init import fit_affine, least_squares_init
from edgevit.stitch.model import ConfigNet, ConfigView, StitchedModel
from edgevit.stitch.space import (count_configs, count_paired, enumerate_configs, layers_needed,
                                  paired_positions)
from edgevit.stitch.train import (DeviceError, RecipeError, StitchRecipe, flops_groups, param_groups, resolve_device,
                                  sample_configs, step_configs, train_stitched)

SHAPE = (1, 1, 28, 28)


def _family(depth=4, widths=(16, 32, 64), seed=0):
    torch.manual_seed(seed)
    return [VisionTransformer(embed_dim=w, depth=depth, num_heads=max(1, w // 16)).eval() for w in widths]


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images so token activations have structure beyond white noise
    return torch.nn.functional.avg_pool2d(torch.randn(n, 1, 32, 32, generator=g), 5, 1)[:, :, :28, :28] * 3


def _labels(n, seed=0):
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- enumeration
def test_reference_count_three_depth12_anchors():
    assert count_paired(12, 2, 1) == 34
    assert layers_needed(12, 2, 1) == 11
    assert len(enumerate_configs(12, 3)) == count_configs(12, 3) == 71


@pytest.mark.parametrize("depth", [1, 2, 5, 12, 24])
@pytest.mark.parametrize("kernel", [1, 2, 3, 4])
@pytest.mark.parametrize("stride", [1, 2, 3, 5])
def test_count_formula_matches_enumeration(depth, kernel, stride):
    pos = paired_positions(depth, kernel, stride)
    assert len(pos) == len({(j, k) for j, k, _ in pos}) == count_paired(depth, kernel, stride)
    for two_way, round_trip in ((False, False), (True, False), (False, True)):
        for n in (2, 3, 4):
            assert len(enumerate_configs(depth, n, kernel, stride, two_way, round_trip=round_trip)) == \
                count_configs(depth, n, kernel, stride, two_way, round_trip)


def test_s1_closed_form_and_windows():
    for depth in range(2, 20):
        for k in range(1, depth + 1):
            assert count_paired(depth, k, 1) == depth * (2 * k - 1) - k * (k - 1)
    # every position lies inside one window of `kernel` blocks
    assert all(abs(j - k) < 3 for j, k, _ in paired_positions(12, 3, 2))


def test_two_way_space_matches_snnetv2_counts():
    cfgs = enumerate_configs(12, 2, two_way=True)
    kinds = {}
    for c in cfgs:
        kinds.setdefault(tuple(s.anchor for s in c.segments), []).append(c)
    assert len(kinds[(0, 1)]) == len(kinds[(1, 0)]) == 34
    assert len(kinds[(0, 1, 0)]) == len(kinds[(1, 0, 1)]) == 55          # as SN-Netv2's sls / lsl lists
    assert all(seg.end > seg.start for c in cfgs for seg in c.segments)  # no empty segment
    assert len(cfgs) == 2 + 34 * 2 + 110


def test_direction_down_reverses_the_one_stitch_routes(tmp_path):
    """`down`: the same positions and count as v1, every stitch large→small (the large anchor's front);
    the stitching layers, LS init and the artifact's reload follow."""
    from edgevit.stitch.space import StitchSpaceError
    up, down = enumerate_configs(12, 3), enumerate_configs(12, 3, direction="down")
    assert len(down) == len(up) == count_configs(12, 3) == 71
    assert all(c.segments[0].anchor == c.segments[1].anchor + 1 for c in down if not c.is_anchor)
    assert [(c.segments[0].end, c.segments[1].start) for c in down[3:]] == \
        [(c.segments[0].end, c.segments[1].start) for c in up[3:]]
    assert [c.name for c in enumerate_configs(12, 2, two_way=True, direction="down")] == \
        [c.name for c in enumerate_configs(12, 2, two_way=True)]                  # two-way has both already
    with pytest.raises(StitchSpaceError, match="direction"):
        enumerate_configs(12, 3, direction="sideways")
    model = StitchedModel(_family(), direction="down")
    assert sorted(model.stitch_layers) == ["1to0", "2to1"]
    errs = least_squares_init(model, _images(32))
    assert errs and all(np.isfinite(v) for v in errs.values())
    x = _images(4, 3)
    for cid in (3, model.num_configs // 2, model.num_configs - 1):
        with torch.no_grad():
            assert torch.isfinite(model.run(x, model.configs[cid])).all()


def test_round_trip_adds_the_front_anchors_two_stitch_routes():
    """`round_trip` with `down`: v1's one-stitch routes large→small plus SN-Netv2's large→small→large
    routes (55 per pair at depth 12), each keeping the large anchor's embedding and head; trained, LS-fitted
    and run like the rest. With two_way, which has them already, it is refused."""
    from edgevit.stitch.space import StitchSpaceError
    cfgs = enumerate_configs(12, 3, direction="down", round_trip=True)
    trips = [c for c in cfgs if len(c.segments) == 3]
    assert len(cfgs) == count_configs(12, 3, round_trip=True) == 3 + 2 * (34 + 55)
    assert len(trips) == 2 * 55
    assert all(c.segments[0].anchor == c.segments[2].anchor == c.segments[1].anchor + 1 for c in trips)
    assert [c.name for c in cfgs if len(c.segments) < 3] == [c.name for c in enumerate_configs(12, 3, direction="down")]
    lsl = {c.name for c in enumerate_configs(12, 2, two_way=True) if len(c.segments) == 3 and c.segments[0].anchor == 1}
    assert {c.name for c in enumerate_configs(12, 2, direction="down", round_trip=True) if len(c.segments) == 3} == lsl
    assert all(c.segments[0].anchor == 0 for c in enumerate_configs(12, 2, round_trip=True) if len(c.segments) == 3)
    with pytest.raises(StitchSpaceError, match="part of two_way"):
        enumerate_configs(12, 3, two_way=True, round_trip=True)
    model = StitchedModel(_family(), direction="down", round_trip=True)
    assert sorted(model.stitch_layers) == ["0to1", "1to0", "1to2", "2to1"]
    assert model.anchors_view().round_trip
    least_squares_init(model, _images(32))
    with torch.no_grad():
        assert torch.isfinite(model.run(_images(4, 3), model.configs[-1])).all()
    assert len(model.configs[-1].segments) == 3


# ---------------------------------------------------------------- LS init
def test_fit_affine_recovers_an_affine_map():
    x = torch.randn(500, 8)
    w, b = torch.randn(5, 8), torch.randn(5)
    w_hat, b_hat = fit_affine(x, x @ w.T + b)
    assert torch.allclose(w_hat, w, atol=1e-4) and torch.allclose(b_hat, b, atol=1e-4)


def test_ls_init_beats_random_init_on_held_out_images():
    model = StitchedModel(_family())
    random_init = copy.deepcopy(model)
    calib, held = _images(100, 0), _images(64, 1)
    least_squares_init(model, calib)
    feats = [block_inputs(a, held) for a in model.anchors]

    def feature_error(m):
        errs = []
        for c in m.configs:
            if c.is_anchor:
                continue
            s, j, k = c.stitches[0], c.segments[0].end, c.segments[1].start
            pred = m.stitch_layer(s.front, s.end, s.layer)(feats[s.front][j])
            errs.append(((pred - feats[s.end][k]).norm() / feats[s.end][k].norm()).item())
        return np.array(errs)

    ls_err, rnd_err = feature_error(model), feature_error(random_init)
    assert (ls_err < rnd_err).all() and ls_err.mean() < 0.5 * rnd_err.mean()

    def logit_error(m):   # whole stitched networks vs the anchor they end in
        out = []
        with torch.no_grad():
            for cid, c in enumerate(m.configs):
                if not c.is_anchor:
                    ref = m.anchors[c.segments[-1].anchor](held)
                    out.append(((m.run(held, c) - ref).norm() / ref.norm()).item())
        return np.mean(out)

    assert logit_error(model) < logit_error(random_init)


# ---------------------------------------------------------------- routing
def test_anchor_configs_equal_their_anchors():
    fam = _family()
    model = StitchedModel([fam[2], fam[0], fam[1]])       # any order in, sorted by width inside
    x = _images(4)
    for cid in range(3):
        model.set_config(cid)
        with torch.no_grad():
            assert torch.equal(model(x), fam[cid](x))


def test_stitch_between_identical_anchors_reproduces_the_anchor():
    """Two copies of one anchor joined by identity stitches: every route (j, j+1), from a stitch after
    the first block to one before the last, is the anchor itself; (j, j) really runs block j twice."""
    a = _family(widths=(32,))[0]
    model = StitchedModel([a, copy.deepcopy(a)])
    for layer in model.stitch_layers["0to1"]:
        layer.set_affine(torch.eye(32), torch.zeros(32))
    x = _images(8, 3)
    with torch.no_grad():
        ref = a(x)
        ends = [c for c in model.configs if not c.is_anchor and c.segments[1].start == c.segments[0].end]
        assert sorted(c.segments[0].end for c in ends) == [1, 2, 3]
        for c in ends:
            assert torch.allclose(model.run(x, c), ref, atol=1e-5), c.name
        c = next(c for c in model.configs if not c.is_anchor and c.segments[1].start == c.segments[0].end - 1)
        assert not torch.allclose(model.run(x, c), ref, atol=1e-3)


def test_set_config_switches_without_moving_weights():
    model = StitchedModel(_family())
    least_squares_init(model, _images(32))
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    x = _images(2)
    outs = []
    with torch.no_grad():
        for cid in (0, 5, 2, 5):
            model.set_config(cid)
            outs.append(model(x))
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
    assert torch.equal(outs[1], outs[3]) and not torch.allclose(outs[0], outs[2])
    with pytest.raises(IndexError):
        model.set_config(model.num_configs)


def test_config_net_is_the_route_alone():
    """The standalone network the pipeline quantises: same outputs as the view, only the route's
    parameters, LoRA merged into plain Linears, and independent of the family's weights."""
    model = StitchedModel(_family(), two_way=True, lora_rank=2)
    least_squares_init(model, _images(32))
    for layers in model.stitch_layers.values():
        for layer in layers:
            torch.nn.init.normal_(layer.lora_b)               # a non-zero low-rank update to merge
    x = _images(4)
    with torch.no_grad():
        for cid in range(model.num_configs):
            net, cfg = ConfigNet(model, cid), model.configs[cid]
            assert torch.equal(net(x), ConfigView(model, cid)(x)), cfg.name
            assert sum(p.numel() for p in net.parameters()) == model.config_params(cfg)
            assert all(type(m) is torch.nn.Linear for m in net.stitches)
    net = ConfigNet(model, 0)
    with torch.no_grad():
        model.anchors[0].head.weight.add_(1.0)
        assert not torch.equal(net(x), ConfigView(model, 0)(x))


def test_device_resolution(monkeypatch):
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(DeviceError, match="auto, cpu or cuda"):
        resolve_device("meta")


def test_training_on_an_explicit_device_leaves_cpu_weights(tmp_path):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        model = StitchedModel(_family())
        least_squares_init(model, _images(32))
        x, y = _images(64, 7), _labels(64)
        info = train_stitched(model, StitchRecipe(epochs=1, warmup_epochs=0, batch_size=32), x, y, tmp_path / dev,
                              progress=False, device=dev)
        assert info["device"] == dev and sum(info["samples_per_config"]) == 2
        assert info["buckets"]            # the default log-flops sampling counted the MACs itself (none given)
        assert {p.device.type for p in model.state_dict().values()} == {"cpu"}
        ckpt = torch.load(tmp_path / dev / "last.pt", weights_only=False, map_location="cpu")
        assert ckpt["recipe"]["epochs"] == 1


def test_resume_refuses_a_checkpoint_of_another_recipe(tmp_path):
    from edgevit.errors import UsageError
    model = StitchedModel(_family())
    x, y = _images(32, 7), _labels(32)
    train_stitched(model, StitchRecipe(epochs=1, batch_size=32), x, y, tmp_path, progress=False)
    with pytest.raises(UsageError, match="another recipe"):
        train_stitched(model, StitchRecipe(epochs=1, batch_size=32, lr=1e-3), x, y, tmp_path, progress=False)


def test_cached_evaluation_equals_plain_forward():
    model = StitchedModel(_family(), two_way=True)
    least_squares_init(model, _images(32))
    x, y = _images(40, 5), torch.randint(0, 10, (40,))
    fast = evaluate_configs(model, x, y, batch_size=16, progress=False)
    with torch.no_grad():
        slow = [100.0 * (model.run(x, c).argmax(-1) == y).float().mean().item() for c in model.configs]
    assert np.allclose(fast, slow)


def test_macs_grow_with_the_larger_anchor_share():
    model = StitchedModel(_family())
    macs = config_macs(model, SHAPE)
    assert macs[0] < macs[1] < macs[2]
    small_to_mid = [(c.segments[0].end, macs[i]) for i, c in enumerate(model.configs)
                    if c.stitches and c.stitches[0].front == 0 and c.segments[1].start == c.segments[0].end]
    assert [m for _, m in sorted(small_to_mid)] == sorted([m for _, m in small_to_mid], reverse=True)


# ---------------------------------------------------------------- selection
def test_pareto_front_and_select():
    cost, acc = [1, 2, 3, 4, 5], [50, 49, 60, 60, 70]
    assert pareto_front(cost, acc) == [0, 2, 4]
    rows = [{"id": i, "macs": c * 1e6, "top1": a, "latency_ms": c / 2} for i, (c, a) in enumerate(zip(cost, acc))]
    assert select(rows, max_macs=4e6)["id"] == 2
    assert select(rows, max_latency_ms=2.6)["id"] == 4
    with pytest.raises(ValueError, match="cheapest"):
        select(rows, max_macs=1e5)
    shipped = [r | {"file": f"graphs/c{r['id']:03d}.onnx" if r["id"] != 2 else None} for r in rows]
    assert select(shipped, max_macs=4e6)["id"] == 3   # config 2 (as accurate, fewer MACs) has no graph kept
    assert parse_amount("120M") == 120e6 and parse_amount("1.5G") == 1.5e9 and parse_amount("800k") == 8e5
    with pytest.raises(ValueError):
        parse_amount("lots")


# ---------------------------------------------------------------- training
def test_flops_grouped_sampling_balances_buckets():
    macs = [1, 2, 3] + [50] * 30 + [100]
    buckets = flops_groups(macs, 4)
    assert sorted(i for b in buckets for i in b) == list(range(len(macs)))
    ids = sample_configs(20000, len(macs), torch.Generator().manual_seed(0), buckets)
    assert torch.equal(ids, sample_configs(20000, len(macs), torch.Generator().manual_seed(0), buckets))
    per_bucket = torch.tensor([sum((ids == i).sum().item() for i in b) for b in buckets], dtype=torch.float)
    assert (per_bucket / per_bucket.sum() - 1 / len(buckets)).abs().max() < 0.02
    uniform = sample_configs(20000, len(macs), torch.Generator().manual_seed(0))
    assert (uniform == 33).float().mean() < 0.05 < (ids == 33).float().mean()


def test_log_flops_buckets_give_each_anchor_pair_the_same_share():
    """A geometric family (each anchor 4× the last): equal-width MACs buckets put most of the steps on the
    large pair; equal-ratio buckets (log-flops) split them evenly between the pairs."""
    small_pair = [int(2 ** (1 + 2 * t / 20)) * 1000 for t in range(1, 20)]      # between 2k and 8k MACs
    large_pair = [int(2 ** (3 + 2 * t / 20)) * 1000 for t in range(1, 20)]      # between 8k and 32k MACs
    macs = small_pair + large_pair
    gen = torch.Generator().manual_seed(0)
    share = {}
    for sampling in ("flops", "log-flops"):
        ids, _ = step_configs(40000, [False] * len(macs), StitchRecipe(sampling=sampling), "warmup", gen, macs)
        share[sampling] = (ids < len(small_pair)).float().mean().item()
    assert share["flops"] < 0.3
    assert abs(share["log-flops"] - 0.5) < 0.07
    with pytest.raises(RecipeError, match="sampling must be one of uniform, flops, log-flops"):
        StitchRecipe(sampling="flop")


def _train(model, tmp_path, **kw):
    x, y = _images(64, 7), _labels(64)
    recipe = StitchRecipe(epochs=2, batch_size=32, lr=1e-3, **kw)
    return train_stitched(model, recipe, x, y, tmp_path, macs=config_macs(model, SHAPE), progress=False)


def test_training_is_seeded_and_resumable(tmp_path):
    base = StitchedModel(_family())
    least_squares_init(base, _images(32))
    straight = copy.deepcopy(base)
    _train(straight, tmp_path / "a", sampling="flops")
    resumed = copy.deepcopy(base)
    x, y = _images(64, 7), _labels(64)
    recipe = StitchRecipe(epochs=2, batch_size=32, lr=1e-3, sampling="flops")
    macs = config_macs(base, SHAPE)
    train_stitched(resumed, recipe, x, y, tmp_path / "b", macs=macs, progress=False, max_steps=2)  # "interrupted"
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    ckpt["history"][-1]["elapsed_s"] = 1000.0                          # as if the first run had trained 1000 s
    torch.save(ckpt, tmp_path / "b" / "last.pt")
    fresh = copy.deepcopy(base)
    info = train_stitched(fresh, recipe, x, y, tmp_path / "b", macs=macs, progress=False)
    assert [h["elapsed_s"] >= 1000.0 for h in info["history"]] == [True] * 3   # the resumed run's clock goes on
    for (n, p), (_, q) in zip(straight.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(p, q), n
    assert any(not torch.equal(p, q) for p, q in zip(base.state_dict().values(), straight.state_dict().values()))


def test_lora_stitching_trains_only_the_low_rank_update(tmp_path):
    model = StitchedModel(_family(), lora_rank=2)
    least_squares_init(model, _images(32))
    before = {n: p.clone() for n, p in model.stitch_layers.named_parameters()}
    info = _train(model, tmp_path, distill=0.5)
    after = dict(model.stitch_layers.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n.endswith(("weight", "bias")))
    used = {f"{s.front}to{s.end}.{s.layer}" for c, k in zip(model.configs, info["samples_per_config"]) if k
            for s in c.stitches}
    assert any(not torch.equal(before[f"{u}.lora_b"], after[f"{u}.lora_b"]) for u in used)


def test_warmup_trains_only_stitches_and_leaves_anchors_bit_identical(tmp_path):
    model = StitchedModel(_family())
    least_squares_init(model, _images(32))
    anchors = copy.deepcopy(model.anchors.state_dict())
    stitches = copy.deepcopy(model.stitch_layers.state_dict())
    x, y = _images(96, 7), _labels(96)
    recipe = StitchRecipe(epochs=0, warmup_epochs=2, batch_size=32, lr=1e-2, distill=0.5, anchor_distill=0.5,
                          anchor_prob=0.5, bf16=False)
    info = train_stitched(model, recipe, x, y, tmp_path, progress=False)
    assert all(torch.equal(v, model.anchors.state_dict()[k]) for k, v in anchors.items())
    assert any(not torch.equal(v, model.stitch_layers.state_dict()[k]) for k, v in stitches.items())
    assert sum(info["samples_per_config"][:3]) == 0 and sum(info["samples_per_config"]) == 6
    assert [h["phase"] for h in info["history"]] == ["warmup", "warmup"]
    assert all(p.requires_grad for p in model.anchors.parameters())      # frozen for the warm-up only


def test_anchor_lr_scale_zero_keeps_anchors_through_the_joint_phase(tmp_path):
    model = StitchedModel(_family())
    anchors = copy.deepcopy(model.anchors.state_dict())
    x, y = _images(64, 7), _labels(64)
    info = train_stitched(model, StitchRecipe(epochs=1, warmup_epochs=1, batch_size=32, lr=1e-2, anchor_lr_scale=0,
                                              anchor_prob=1.0), x, y, tmp_path, progress=False)
    assert all(torch.equal(v, model.anchors.state_dict()[k]) for k, v in anchors.items())
    assert sum(info["samples_per_config"][:3]) == 0 and sum(info["samples_per_config"]) == 4   # stitched only


def test_param_groups_give_stitches_lr_and_anchors_the_scaled_lr():
    model = StitchedModel(_family())
    recipe = StitchRecipe(lr=1e-3, anchor_lr_scale=0.1)
    groups = param_groups(model, recipe, "joint")
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert len(by_param) == sum(len(g["params"]) for g in groups)        # no parameter twice
    assert all(by_param[id(p)]["lr"] == 1e-3 for p in model.stitch_layers.parameters())
    assert all(by_param[id(p)]["lr"] == pytest.approx(1e-4) for p in model.anchors.parameters())
    assert len(by_param) == sum(1 for _ in model.parameters())
    warm = {id(p) for g in param_groups(model, recipe, "warmup") for p in g["params"]}
    assert warm == {id(p) for p in model.stitch_layers.parameters()}


def test_training_applies_the_scaled_lr_at_every_step(tmp_path, monkeypatch):
    """The schedule scales each group: anchors stay at lr × anchor_lr_scale of the stitches on every step."""
    seen = []
    step = torch.optim.AdamW.step

    def record(self, *a, **k):
        seen.append({g["name"]: g["lr"] for g in self.param_groups})
        return step(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    model = StitchedModel(_family())
    x, y = _images(96, 7), _labels(96)
    train_stitched(model, StitchRecipe(epochs=2, warmup_epochs=1, batch_size=32, lr=1e-3, anchor_lr_scale=0.25),
                   x, y, tmp_path, progress=False)
    assert len(seen) == 9
    assert all(set(s) == {"stitch.decay", "stitch.no_decay"} for s in seen[:3])
    joint = seen[3:]
    assert all(s["anchors.decay"] == pytest.approx(0.25 * s["stitch.decay"]) for s in joint)
    assert max(s["stitch.decay"] for s in joint) <= 1e-3 and len({s["stitch.decay"] for s in joint}) > 1


def test_step_configs_warmup_and_anchor_share():
    is_anchor = [True] * 3 + [False] * 68
    macs = [1, 5, 20] + list(range(2, 70))
    gen = torch.Generator().manual_seed(0)
    warm, _ = step_configs(5000, is_anchor, StitchRecipe(sampling="flops"), "warmup", gen, macs)
    assert (warm >= 3).all()
    ids, _ = step_configs(20000, is_anchor, StitchRecipe(anchor_prob=0.3, sampling="uniform"), "joint", gen)
    share = (ids < 3).float().mean().item()
    assert abs(share - 0.3) < 0.02 and all(abs((ids == a).float().mean().item() - 0.1) < 0.02 for a in range(3))
    own, buckets = step_configs(100, is_anchor, StitchRecipe(sampling="flops", anchor_prob=0), "joint", gen, macs)
    assert sorted(i for b in buckets for i in b) == list(range(71))     # SN-Net's sampler over every config


def test_resume_across_the_warmup_boundary(tmp_path):
    base = StitchedModel(_family())
    least_squares_init(base, _images(32))
    x, y = _images(64, 7), _labels(64)
    recipe = StitchRecipe(epochs=1, warmup_epochs=1, batch_size=32, lr=1e-3, anchor_lr_scale=0.1, anchor_prob=0.5)
    straight = copy.deepcopy(base)
    train_stitched(straight, recipe, x, y, tmp_path / "a", progress=False)
    resumed = copy.deepcopy(base)
    train_stitched(resumed, recipe, x, y, tmp_path / "b", progress=False, max_steps=2)    # stops after the warm-up
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["opt_phase"] == "warmup"
    train_stitched(resumed, recipe, x, y, tmp_path / "b", progress=False)
    for (n, p), (_, q) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), n
    from edgevit.errors import UsageError
    with pytest.raises(UsageError, match="another recipe"):
        train_stitched(resumed, StitchRecipe(epochs=1, warmup_epochs=1, batch_size=32, lr=1e-3, anchor_lr_scale=0.2,
                                             anchor_prob=0.5), x, y, tmp_path / "b", progress=False)


@pytest.mark.parametrize("field, value", [("warmup_epochs", -1), ("anchor_lr_scale", float("nan")),
                                          ("anchor_distill", 1.5), ("anchor_prob", -0.1), ("anchor_lr_scale", True),
                                          ("distill_teacher", "smallest")])
def test_recipe_rejects_out_of_range_options(field, value):
    from edgevit.stitch.train import RecipeError
    with pytest.raises(RecipeError, match=field.replace("_", "-")):
        StitchRecipe(**{field: value})


def test_distill_teacher_route_uses_the_routes_largest_anchor(tmp_path, monkeypatch):
    """`route`: a stitched step's teacher is the original of the largest anchor its route runs, so with
    two anchors it trains exactly as `largest`; with three (tiny↔small routes) it differs."""
    import edgevit.stitch.train as T
    calls = []
    real = T.F.kl_div
    monkeypatch.setattr(T.F, "kl_div", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    two = StitchedModel(_family(widths=(16, 32)))
    least_squares_init(two, _images(32))
    runs = {}
    for teacher in ("largest", "route"):
        m = copy.deepcopy(two)
        _train(m, tmp_path / f"two-{teacher}", distill=0.5, distill_teacher=teacher, anchor_distill=0.0)
        runs[teacher] = m.state_dict()
    assert calls and all(torch.equal(runs["largest"][k], runs["route"][k]) for k in runs["largest"])
    three = StitchedModel(_family())
    least_squares_init(three, _images(32))
    a, b = copy.deepcopy(three), copy.deepcopy(three)
    _train(a, tmp_path / "three-largest", distill=0.5, anchor_distill=0.0)
    _train(b, tmp_path / "three-end", distill=0.5, distill_teacher="route", anchor_distill=0.0)
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(__import__("edgevit.errors", fromlist=["UsageError"]).UsageError, match="another recipe"):
        _train(copy.deepcopy(three), tmp_path / "three-end", distill=0.5, anchor_distill=0.0)


def test_anchor_line_and_frontier_stats():
    from edgevit.stitch.pipeline import anchor_line, frontier_stats
    rows = [{"macs": m * 1e6, "top1": a, "is_anchor": anc, "pareto": p} for m, a, anc, p in [
        (2, 80.0, True, True), (10, 88.0, True, True), (42, 92.0, True, True),      # anchors: line 80→88→92
        (6, 84.2, False, True), (20, 89.0, False, True), (31, 90.1, False, True), (8, 80.0, False, False)]]
    assert anchor_line(rows, 6e6) == pytest.approx(84.0) and anchor_line(rows, 26e6) == pytest.approx(90.0)
    assert anchor_line(rows, 1e6) == 80.0 and anchor_line(rows, 50e6) == 92.0
    st = frontier_stats(rows)
    assert st["stitched_on_frontier"] == 3
    assert st["max_gap_frac"] == pytest.approx(11 / 40)                        # 31M → 42M
    assert st["worst_line_delta"] == pytest.approx(90.1 - (88 + 4 * 21 / 32), abs=1e-3)   # the 31M point, below
    assert st["worst_line_delta_per_span"] == pytest.approx([0.2, 90.1 - (88 + 4 * 21 / 32)], abs=1e-3)
    only_anchors = [r | {"pareto": r["is_anchor"]} for r in rows]
    assert frontier_stats(only_anchors)["stitched_on_frontier"] == 0
    assert frontier_stats(only_anchors)["max_gap_frac"] == pytest.approx(32 / 40)


def test_select_returns_a_stitched_config_between_the_anchors():
    """Once the frontier has stitched configurations, every budget between two frontier anchors that
    reaches a stitched frontier point picks a stitched configuration, never the anchor below it."""
    rows = [{"id": i, "macs": m * 1e6, "top1": a, "is_anchor": anc, "pareto": True, "file": f"c{i}.onnx"}
            for i, (m, a, anc) in enumerate([(2, 80.0, True), (10, 88.0, True), (42, 92.0, True),
                                             (6, 84.5, False), (18, 89.5, False), (26, 90.3, False),
                                             (34, 91.2, False)])]
    for budget, want in ((7, 3), (9.9, 3), (19, 4), (30, 5), (41, 6)):
        got = select(rows, max_macs=budget * 1e6)
        assert got["id"] == want and not got["is_anchor"], budget
    assert select(rows, max_macs=10e6)["id"] == 1 and select(rows, max_macs=50e6)["id"] == 2


# ---------------------------------------------------------------- export
def test_export_shares_weights_and_matches_torch(tmp_path):
    from edgevit.stitch.export import export_stitched
    from runtimes.artifact import load_artifact
    import onnxruntime as ort
    model = StitchedModel(_family(depth=3, widths=(16, 48)))
    least_squares_init(model, _images(32))
    x, y = _images(16, 9), _labels(16)
    macs = config_macs(model, SHAPE)
    top1 = evaluate_configs(model, x, y, progress=False)
    front = set(pareto_front(macs, top1))
    rows = [{"id": i, "name": c.name, "macs": macs[i], "params": model.config_params(c), "top1": top1[i],
             "is_anchor": c.is_anchor, "pareto": i in front} for i, c in enumerate(model.configs)]
    anchor_bytes = sum(4 * p.numel() for a in model.anchors for p in a.parameters())
    manifest = export_stitched(model, tmp_path / "art", rows=rows, input_shape=SHAPE,
                               preprocess={"size": 28, "channels": 1, "mean": [0.0], "std": [1.0]},
                               labels=[str(i) for i in range(10)], anchors=["s", "l"],
                               parity_inputs=x.numpy(), space={"kernel": 2, "stride": 1, "two_way": False,
                                                               "lora_rank": 0},
                               metrics={"anchors_fp32_bytes": anchor_bytes}, latency_iters=3,
                               progress=False, keep_graphs="all")
    art = load_artifact(tmp_path / "art")                    # schema + sha256 of every file
    stitch_bytes = sum(4 * p.numel() for p in model.stitch_layers.parameters())
    assert manifest["metrics"]["weights_bin_bytes"] <= 1.05 * (anchor_bytes + stitch_bytes)
    assert len(manifest["configs"]) == model.num_configs and all(r["latency_ms"] > 0 for r in manifest["configs"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    for cid in (0, 1, 2, 5, model.num_configs - 1):
        sess = ort.InferenceSession(str(art.root / manifest["configs"][cid]["file"]), so)
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = ConfigView(model, cid)(x).numpy()
        assert np.abs(got - ref).max() < 1e-4
    index = json.loads((art.root / manifest["entry"]).read_text())
    assert [r["id"] for r in index] == list(range(model.num_configs))


# ---------------------------------------------------------------- CLI
@pytest.mark.parametrize("args, message", [
    (("stitch",), "give --anchors"),
    (("stitch", "--anchors", "vit-tiny", "--out", "x"), "at least two"),
    (("stitch", "--anchors", "vit-tiny,vit-small", "--weights", "a.pt", "--out", "x"), "one per anchor"),
    (("stitch", "--anchors", "vit-tiny,vit-small", "--train-data", "imagenet", "--out", "x"), "unknown data spec"),
    (("stitch", "select", "/nonexistent/stitch", "--max-macs", "20M"), "not an artifact directory"),
    (("stitch", "--anchors", "vit-tiny,vit-small", "--device", "tpu", "--out", "x"), "--device 'tpu'"),
    (("stitch", "--anchors", "vit-tiny,vit-small", "--warmup-epochs", "-1", "--out", "x"), "--warmup-epochs"),
    (("stitch", "--anchors", "vit-tiny,vit-small", "--anchor-lr-scale", "-0.5", "--out", "x"), "--anchor-lr-scale"),
    (("stitch", "--anchors", "vit-tiny,vit-small", "--anchor-lr-scale", "nan", "--out", "x"), "anchor-lr-scale"),
    (("stitch", "--anchors", "vit-tiny,vit-small", "--anchor-distill", "1.5", "--out", "x"), "--anchor-distill"),
    (("stitch", "--anchors", "vit-tiny,vit-small", "--anchor-prob", "lots", "--out", "x"), "--anchor-prob"),
    (("stitch", "--anchors", "vit-tiny,vit-small", "--epochs", "-2", "--out", "x"), "--epochs"),
    (("stitch", "--anchors", "vit-tiny,vit-small", "--two-way", "--round-trip", "--out", "x"), "part of --two-way"),
    pytest.param(("stitch", "--anchors", "vit-tiny,vit-small", "--device", "cuda", "--out", "x"), "sees no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
])
def test_cli_rejects_bad_input_with_one_line(cli_runner, args, message):
    from edgevit.cli import cli
    result = cli_runner.invoke(cli, list(args))
    assert result.exit_code == 2 and message in result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1


def test_cli_defaults_are_the_recipe_defaults():
    """`edgevit stitch`'s schedule flags default to StitchRecipe's, so the CLI, the pipeline and the library agree."""
    import dataclasses
    from edgevit.commands.stitch import stitch_cmd
    defaults = {f.name: f.default for f in dataclasses.fields(StitchRecipe)}
    flags = {p.name: p.default for p in stitch_cmd.params}
    for name in ("epochs", "batch_size", "lr", "sampling", "distill", "seed", "warmup_epochs", "anchor_lr_scale",
                 "anchor_distill", "anchor_prob", "distill_teacher"):
        assert flags[name] == defaults[name], name


def test_schedule_flags_are_pipeline_recipe_keys_checked_up_front(cli_runner, tmp_path):
    import yaml
    from edgevit.cli import cli
    from edgevit.pipeline.recipe import stage_keys
    assert {"warmup-epochs", "anchor-lr-scale", "anchor-distill", "anchor-prob", "distill-teacher"} \
        <= set(stage_keys("stitch"))
    doc = {"model": "vit-tiny", "stages": [{"stitch": {"anchors": "vit-tiny,vit-small", "anchor-prob": 2}}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(doc))
    res = cli_runner.invoke(cli, ["pipeline", str(tmp_path / "r.yaml"), "--check"])
    assert res.exit_code == 2 and "stitch.anchor-prob" in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1


def test_cli_select_reads_the_manifest(cli_runner, tmp_path):
    from edgevit.cli import cli
    from runtimes.artifact import ArtifactWriter
    configs = [{"id": i, "name": f"c{i}", "file": f"onnx/c{i}.onnx", "macs": m, "params": 1, "top1": a,
                "latency_ms": m / 1e7, "parity_max_abs": 0.0, "is_anchor": i in (0, 2), "pareto": True}
               for i, (m, a) in enumerate([(3e6, 80.0), (10e6, 85.0), (40e6, 90.0)])]
    with ArtifactWriter(tmp_path / "art") as w:
        (w.dir / "onnx").mkdir()
        for c in configs:
            (w.dir / c["file"]).write_bytes(b"x")
        (w.dir / "configs.json").write_text(json.dumps(configs))
        w.commit({"runtime": "stitch", "entry": "configs.json", "input": {"name": "input", "shape": [1, 1, 28, 28],
                  "dtype": "float32"}, "output": {"name": "logits", "shape": [1, 10], "dtype": "float32"},
                  "preprocess": {"size": 28, "channels": 1, "mean": [0.0], "std": [1.0]}, "labels": [],
                  "quant": None, "tools": {}, "configs": configs})
    result = cli_runner.invoke(cli, ["stitch", "select", str(tmp_path / "art"), "--max-macs", "20M", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["id"] == 1
    result = cli_runner.invoke(cli, ["stitch", "select", str(tmp_path / "art"), "--max-latency-ms", "5"])
    assert result.exit_code == 0 and "config 2" in result.output
    result = cli_runner.invoke(cli, ["stitch", "select", str(tmp_path / "art"), "--max-macs", "1M"])
    assert result.exit_code == 2 and "no configuration fits" in result.output


def test_trained_seconds_adds_up_the_runs_of_a_resumed_checkpoint():
    """Old checkpoints restarted the clock on resume (the drop marks a new run); new ones carry it on."""
    from edgevit.stitch.train import trained_seconds
    assert trained_seconds([]) == 0.0
    assert trained_seconds([{"elapsed_s": 10.0}, {"elapsed_s": 20.0}, {"elapsed_s": 30.0}]) == 30.0
    assert trained_seconds([{"elapsed_s": 10.0}, {"elapsed_s": 20.0}, {"elapsed_s": 5.0}, {"elapsed_s": 9.0}]) == 29.0
