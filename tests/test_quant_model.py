"""Quantised modules, the RTN driver, observers, specs and packed checkpoints (random weights: fast)."""
import copy

import pytest
import torch

import quant
from edgevit.models.bundled import BUNDLED
from quant.observers import absmax, fake_quant_range

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return BUNDLED["vit-tiny"]["factory"]().eval()


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    m = BUNDLED["mobilenet-mini"]["factory"]().eval()
    for mod in m.modules():      # non-trivial BN statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture(scope="module")
def x():
    return torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_quantize_model_leaves_the_float_model_untouched(vit, x):
    before = copy.deepcopy(vit.state_dict())
    types = [type(m) for m in vit.modules()]
    q = quant.quantize_model(vit, quant.parse_spec("fp4", "w4a6"), x)
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    assert types == [type(m) for m in vit.modules()]
    assert isinstance(q.blocks[0].attn.qkv, quant.QuantLinear) and not isinstance(vit.blocks[0].attn.qkv, quant.QuantLinear)


@pytest.mark.parametrize("fmt,bits,min_db", [("int", "w8a8", 25), ("fp8", "w8a8", 15), ("mxint8", "w8a8", 25),
                                             ("fp4", "w4a6", 3), ("mxfp4", "w4a8", 3), ("int", "w4a8", 3)])
def test_quantised_output_is_close_and_not_identical(vit, x, fmt, bits, min_db):
    q = quant.quantize_model(vit, quant.parse_spec(fmt, bits), x)
    with torch.no_grad():
        ref, out = vit(x), q(x)
    db = quant.sqnr_db(ref, out)
    assert min_db < db < 200


def test_attention_matmul_inputs_are_quantised(vit, x):
    q = quant.quantize_model(vit, quant.parse_spec("int", "w8a8", {"softmax_bits": 8}), x)
    attn = q.blocks[0].attn
    assert attn.quant_kind == "attention" and attn.softmax_quant.fmt.name == "uint8"
    seen = {}
    for n in ("q_quant", "k_quant", "v_quant", "softmax_quant"):
        getattr(attn, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o)))
    with torch.no_grad():
        q(x[:2])
    for n, (inp, out) in seen.items():
        assert not torch.equal(inp, out), n
        levels = torch.unique(out).numel()
        assert levels <= 256, n


def test_conv_and_depthwise_conv_are_quantised_and_checkpoint_round_trips(cnn, x, tmp_path):
    q = quant.quantize_model(cnn, quant.parse_spec("int", "w4a8"), x)
    kinds = [m.quant_kind for _, m in quant.quantized_layers(q)]
    assert kinds.count("conv") == sum(isinstance(m, torch.nn.Conv2d) for m in cnn.modules())
    dw = [m for _, m in quant.quantized_layers(q) if m.quant_kind == "conv" and m.groups > 1][0]
    assert dw.weight_quant.scale.shape == (dw.out_channels, 1)
    assert torch.unique(dw.weight_quant.codes(dw.weight)).numel() <= 16
    quant.save_quantized(q, tmp_path / "ck")
    q2 = quant.load_quantized(tmp_path / "ck", cnn)
    with torch.no_grad():
        assert torch.equal(q(x), q2(x))


@pytest.mark.parametrize("fmt,bits,recipe", [("fp4", "w4a6", {}), ("int", "w8a8", {}), ("int", "w3a8", {}),
                                             ("fp6", "w6a6", {"weight_format": "e3m2"}), ("mxfp4", "w4a8", {}),
                                             ("int", "w6a6", {"weight_granularity": "group", "group_size": 24,
                                                              "layers": {"blocks.1": {"bits": "w8a8"}}})])
def test_checkpoint_round_trip_is_identical_and_packed(vit, x, tmp_path, fmt, bits, recipe):
    q = quant.quantize_model(vit, quant.parse_spec(fmt, bits, recipe, keep_float=["head"]), x)
    sizes = quant.save_quantized(q, tmp_path / "ck", model_info={"registry_name": "vit-tiny"})
    q2 = quant.load_quantized(tmp_path / "ck", vit)
    with torch.no_grad():
        assert torch.equal(q(x), q2(x))
    assert quant.read_config(tmp_path / "ck")["model"] == {"registry_name": "vit-tiny"}
    assert sizes["weights_file_bytes"] > sizes["ideal_bytes"]
    weight_bits = q.blocks[0].attn.qkv.weight_quant.fmt.code_bits
    from quant import safetensors_io
    t = safetensors_io.read(tmp_path / "ck" / "weights.safetensors")
    assert t["blocks.0.attn.qkv.weight.codes"].size == q.blocks[0].attn.qkv.weight.numel() * weight_bits // 8
    assert "blocks.0.attn.qkv.weight" not in t and "head.weight" in t


@pytest.mark.parametrize("fmt,bits", [("fp4", "w4a6"), ("int", "w4a8"), ("mxfp4", "w4a8")])
def test_packed_size_is_within_ten_percent_of_ideal(x, tmp_path, fmt, bits):
    """Ideal = codes at their bit width + scales + float leftovers; the rest is file headers."""
    model = BUNDLED["vit-small"]["factory"]().eval()
    q = quant.quantize_model(model, quant.parse_spec(fmt, bits), x[:8])
    sizes = quant.save_quantized(q, tmp_path / "ck")
    assert sizes["weights_file_bytes"] <= 1.10 * sizes["ideal_bytes"]
    fp32 = sum(t.numel() * 4 for t in model.state_dict().values())
    assert sizes["total_bytes"] < 0.18 * fp32


def test_save_refuses_to_overwrite_without_force(vit, x, tmp_path):
    q = quant.quantize_model(vit, quant.parse_spec("int", "w8a8"), x)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "keep.txt").write_text("mine")
    with pytest.raises(quant.SpecError, match="--overwrite"):
        quant.save_quantized(q, tmp_path / "ck")
    assert (tmp_path / "ck" / "keep.txt").read_text() == "mine"
    quant.save_quantized(q, tmp_path / "ck", force=True)
    assert not (tmp_path / "ck" / "keep.txt").exists() and (tmp_path / "ck" / "quant.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]       # no temp dirs left behind


def test_fp_weight_scale_maps_group_max_to_format_max(vit):
    spec = quant.parse_spec("fp4", "w4a6", {"group_size": 16})
    q = quant.quantize_model(vit, spec, None)
    lin = q.blocks[0].mlp.fc1
    wq = lin.weight_quant
    assert wq.group_size == 16 and wq.scale.shape == (lin.out_features, lin.in_features // 16)
    gmax = lin.weight.reshape(lin.out_features, -1, 16).abs().amax(-1)
    assert torch.allclose(gmax / wq.scale, torch.full_like(gmax, 6.0), rtol=1e-3)
    assert wq.describe()["granularity"] == "group" and wq.describe()["format"] == "e2m1"


def test_dynamic_per_token_scales_each_token_separately():
    aq = quant.ActQuantizer(quant.QConfig("e2m3", "token"), axis=-1)
    x = torch.randn(2, 5, 8) * torch.logspace(-3, 3, 5).view(1, 5, 1)
    y = aq(x)
    assert torch.allclose(y.abs().amax(-1), x.abs().amax(-1))   # each token's max lands on the grid max
    assert quant.sqnr_db(x, y) > 20


def test_mse_observer_beats_minmax_on_heavy_tails():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) ** 3        # heavy-tailed, like real weight outliers
    fmt = quant.parse_format("int3")
    errs = {}
    for obs in ("minmax", "mse", "percentile"):
        hi = absmax(w, obs, 99.0, fmt)
        errs[obs] = (fake_quant_range(w, fmt, -hi, hi, True) - w).pow(2).sum().item()
    assert errs["mse"] < errs["minmax"]


@pytest.mark.parametrize("fam, bits, wobs, aobs", [("int", "w8a8", "minmax", "minmax"), ("int", "w4a6", "mse", "mse"),
                                                   ("int", "w8a16", "minmax", "minmax"), ("fp4", "w4a6", "minmax", "minmax")])
def test_observer_rule(fam, bits, wobs, aobs):
    """Clipping search where it pays: INT weights ≤ 4 bit and static activations < 8 bit; recipe overrides."""
    d = quant.parse_spec(fam, bits).default
    assert (d.weight.observer, d.act.observer) == (wobs, aobs)
    assert quant.parse_spec(fam, bits, {"act_observer": "percentile"}).default.act.observer == "percentile"


@pytest.mark.parametrize("fam, bits, act", [("int", "w4a32", None), ("int", "w4a16", "uint16"), ("fp4", "w4a16", None),
                                           ("fp4", "w4a32", None), ("mxfp4", "w4a32", None)])
def test_a32_is_weight_only_in_every_family(fam, bits, act):
    """A32: activations stay float everywhere; A16 is weight-only for FP/MX but 16-bit integers for INT."""
    d = quant.parse_spec(fam, bits).default
    assert (d.act.fmt if d.act is not None else None) == act


@pytest.mark.parametrize("observer", ["mse", "percentile"])
def test_histogram_observers_do_not_depend_on_batching(vit, x, observer):
    """Every calibration value is counted (second pass over the first pass's range): the scales are the same
    whether the data come as one batch, small batches or a one-shot generator."""
    spec = quant.parse_spec("int", "w8a8", {"act_observer": observer})
    scales = []
    for calib in (x, x.split(3), (b for b in x.split(5))):
        q = quant.quantize_model(vit, spec, calib)
        scales.append(torch.stack([m.scale for _, m in quant.modules.act_quantizers(q) if m.scale is not None]))
    assert torch.equal(scales[0], scales[1]) and torch.equal(scales[0], scales[2])
    minmax = quant.quantize_model(vit, quant.parse_spec("int", "w8a8", {"act_observer": "minmax"}), x)
    mm = torch.stack([m.scale for _, m in quant.modules.act_quantizers(minmax) if m.scale is not None])
    assert (scales[0] <= mm * (1 + 1e-6)).all() and (scales[0] < mm).any()   # clipping, never widening


def test_eval_weight_cache_is_not_inherited_by_a_copy(vit, x):
    """A deepcopy carries the cached tensor and its key along; the copy must not trust them for new weights."""
    import copy
    q = quant.quantize_model(vit, quant.parse_spec("int", "w8a8"), x)
    lin = q.blocks[0].mlp.fc1
    with torch.no_grad():
        lin.qweight()
        twin = copy.deepcopy(lin)
        twin.weight = torch.nn.Parameter(twin.weight * 0.5)   # a new tensor, version 0, maybe a reused address
        assert torch.equal(twin.qweight(), twin.weight_quant.quantize(twin.weight))


def test_eval_weight_cache_follows_in_place_updates(vit, x):
    q = quant.quantize_model(vit, quant.parse_spec("int", "w8a8"), x)
    lin = q.blocks[0].attn.qkv
    with torch.no_grad():
        a = lin.qweight()
        assert lin.qweight() is a                      # cached
        lin.weight.mul_(2.0)
        assert not torch.equal(lin.qweight(), a)        # invalidated


@pytest.mark.parametrize("fmt,bits,match", [("int", "w9a3", "2-8 bits"), ("int", "w8a12", "32 \\(float"), ("fp4", "w8a8", "4-bit weights"),
                                            ("int", "w8", "wNaM"), ("fp8", "w8a5", "FP activations"),
                                            ("mxint8", "w8a4", "8 or 16"), ("fp16", "w8a8", "--fmt")])
def test_impossible_specs_are_rejected(fmt, bits, match):
    with pytest.raises(quant.SpecError, match=match):
        quant.parse_spec(fmt, bits)


def test_bad_recipes_and_patterns_are_rejected(vit):
    with pytest.raises(quant.SpecError, match="unknown recipe key"):
        quant.parse_spec("int", "w8a8", {"bogus": 1})
    with pytest.raises(quant.SpecError, match="granularity"):
        quant.parse_spec("int", "w8a8", {"act_granularity": "block"})
    spec = quant.parse_spec("int", "w8a8", keep_float=["nothing.like.this"])
    with pytest.raises(quant.SpecError, match="matches no quantisable layer"):
        quant.plan_model(vit, spec)


def test_recipe_overrides_and_keep_float(vit):
    spec = quant.parse_spec("int", "w8a8", {"layers": {"blocks.0.*": {"bits": "w4a8"}, "head": "float"},
                                            "quantize_norm_inputs": True}, keep_float=["patch_embed.*"])
    plan = quant.plan_model(vit, spec)
    assert plan["blocks.0.attn.qkv"].config.weight.fmt == "int4"
    assert plan["blocks.1.attn.qkv"].config.weight.fmt == "int8"
    assert "head" not in plan and "patch_embed.proj" not in plan
    assert plan["blocks.0.norm1"].kind == "norm"
