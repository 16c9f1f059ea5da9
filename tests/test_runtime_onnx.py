"""ONNX runtime: FP32 and quantised export → run → parity on the bundled trained models, in-graph
activation quantisation (exact against quant's own quantisers), packed-weight sizes, CLI errors."""
import numpy as np
import pytest
import torch

from edgevit.data import load_data
from edgevit.models.bundled import FASHION_MNIST_PREPROCESS as PRE, LABELS
from runtimes.artifact import load_artifact
from runtimes.errors import ExportError, ParityError
from runtimes.onnx.artifact import export_onnx_artifact
from runtimes.onnx.quantspec import ActQuant, LayerQuant, QuantSpec, spec_from_model
from runtimes.runner import open_runner

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def images():
    x, y = load_data("fashion-mnist:64", PRE, "test", seed=0)
    return x.numpy(), y.numpy()


def _model(name):
    from edgevit.models.registry import load_model
    return load_model(name)[0].eval()


def _quantised(name, family, bits):
    """quant's own PTQ (RTN, 64 calibration images) of a bundled trained model."""
    import quant
    from edgevit.data import calibration_tensor
    return quant.quantize_model(_model(name), quant.parse_spec(family, bits, None, ()),
                                calibration_tensor("fashion-mnist:64", PRE, seed=0))


def _export(model, out, images, spec=None, **kw):
    x, y = images
    return export_onnx_artifact(model, out, input_shape=(1, 1, 28, 28), preprocess=PRE.to_dict(), labels=list(LABELS),
                                parity_inputs=x, parity_labels=y, model_info={"name": "t"}, quant_spec=spec, **kw)


def _spec(model, fmt, group=0):
    """Weight-only round-to-nearest quantisation of every Linear (and non-depthwise conv), absmax scales."""
    import ml_dtypes
    layers = {}
    for n, m in model.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) or (m.weight.ndim == 4 and m.groups > 1):
            continue
        w = m.weight.detach().numpy().reshape(m.weight.shape[0], -1)
        g = w.shape[1] // group if group and w.shape[1] % group == 0 else 1
        wg = w.reshape(w.shape[0], g, -1)
        amax = np.abs(wg).max(-1)
        if fmt.startswith("int"):
            qmax = 2 ** (int(fmt[3:]) - 1) - 1
            s = (amax / qmax).astype(np.float16).astype(np.float32)   # fp16 scales, as quant stores them
            q = np.clip(np.round(wg / s[..., None]), -qmax - 1, qmax)
        else:
            dt = {"fp4_e2m1": ml_dtypes.float4_e2m1fn, "fp6_e3m2": ml_dtypes.float6_e3m2fn,
                  "fp8_e5m2": ml_dtypes.float8_e5m2}[fmt]
            s = amax / float(ml_dtypes.finfo(dt).max)
            if s.min() >= 2.0 ** -14:   # fp16 scales where they fit its normal range, as quant stores them
                s = s.astype(np.float16).astype(np.float32)
            q = (wg / s[..., None]).astype(dt).astype(np.float32)
        layers[n] = LayerQuant(fmt, q.reshape(m.weight.shape), s, scale_dtype="float16")  # kept only if exact
    return QuantSpec(f"w{fmt[-1] if fmt.startswith('int') else fmt[2]}", layers)


class _FakeQuant(torch.nn.Module):
    """Torch reference for a weight-only spec: the model with dequantised weights."""

    def __init__(self, model, spec):
        super().__init__()
        from runtimes.onnx.quantized import float_twin
        self.m = float_twin(model, spec)
        self.spec = QuantSpec(spec.precision, {f"m.{k}": v for k, v in spec.layers.items()})

    def forward(self, x):
        return self.m(x)


def test_fp32_export_run_parity(tmp_path, images):
    art = _export(_model("vit-tiny"), tmp_path / "a", images)
    m = art.manifest
    assert m["parity"]["metrics"]["max_abs"] <= 1e-4 and m["parity"]["thresholds"]["max_abs"] == 1e-4
    assert m["labels"] == list(LABELS) and m["input"]["shape"] == ["batch", 1, 28, 28]
    out = open_runner(load_artifact(tmp_path / "a")).run(images[0][:3])
    with torch.no_grad():
        ref = _model("vit-tiny")(torch.from_numpy(images[0][:3])).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)


# measured on vit-small (weight-only, fp16 scales; decoders as local functions): int4 0.157, fp4 0.157,
# int2 0.096, fp6 0.231, fp8 0.283, int4/32 0.167; ~1-2 % slack. W4 stays under the 0.16x.
@pytest.mark.parametrize("fmt,group,bits_ratio", [("int4", 0, 0.16), ("fp4_e2m1", 0, 0.16), ("int2", 0, 0.10),
                                                  ("fp6_e3m2", 0, 0.235), ("fp8_e5m2", 0, 0.29), ("int4", 32, 0.17)])
def test_lowbit_weights_are_real_and_agree(tmp_path, images, fmt, group, bits_ratio):
    model = _model("vit-small")
    fp32 = _export(model, tmp_path / "fp32", images)
    fq = _FakeQuant(model, _spec(model, fmt, group))
    art = _export(fq, tmp_path / fmt, images, fq.spec)
    assert art.manifest["parity"]["metrics"]["top1_agreement"] >= 0.99
    ratio = art.size_bytes / fp32.size_bytes
    assert ratio <= bits_ratio, f"{fmt}: {ratio:.3f}x of FP32"
    import onnx
    onnx.checker.check_model(onnx.load(str(art.entry)), full_check=True)
    assert all(l["fmt"] == fmt for l in art.manifest["quant"]["layers"])


def test_cnn_int8_with_batchnorm_folded(tmp_path, images):
    model = _model("mobilenet-mini")
    fq = _FakeQuant(model, _spec(model, "int8"))
    art = _export(fq, tmp_path / "q", images, fq.spec)
    assert art.manifest["parity"]["metrics"]["sqnr_db"] == "inf" or art.manifest["parity"]["metrics"]["sqnr_db"] > 40


@pytest.mark.parametrize("act", [ActQuant("uint8", "per-tensor", 0.05, 120), ActQuant("uint4", "per-tensor", 0.3, 7),
                                 ActQuant("int8", "per-tensor", 0.02), ActQuant("int8", "per-token"),
                                 ActQuant("uint6", "per-token"), ActQuant("e2m3", "per-token"),
                                 ActQuant("e3m4", "per-tensor", 0.01), ActQuant("e4m3fn", "per-token"),
                                 ActQuant("e2m1", "per-token", axis=1), ActQuant("mxfp8b16", "block"),
                                 ActQuant("mxint8b16", "block", axis=1)], ids=lambda a: f"{a.fmt}-{a.granularity}")
def test_activation_rounding_in_graph_matches_quant(tmp_path, act):
    """Every activation format's ONNX rounding equals quant's ActQuantizer on inputs spanning 4 decades."""
    import onnx
    import onnxruntime as ort
    from runtimes.onnx.actquant import ActQuantOp, function_protos
    from runtimes.onnx.export import export_onnx
    from runtimes.onnx.functions import attach
    x = torch.randn(4, 32, 3, 3) * torch.logspace(-3, 1, 32).view(1, 32, 1, 1)
    if act.axis == -1:
        x = x.permute(0, 2, 3, 1).reshape(4, 9, 32).contiguous()
    for as_function in (False, True):   # inline ops, and the model-local function the exporter writes
        op = ActQuantOp(act, as_function=as_function)
        export_onnx(op, tuple(x.shape), tmp_path / "a.onnx", opset=20, dynamic_batch=True)
        m = onnx.load(str(tmp_path / "a.onnx"))
        attach(m, function_protos({n.op_type for n in m.graph.node}, 20))
        onnx.checker.check_model(m, full_check=True)
        got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = op(x).numpy()
        assert len(np.unique(ref)) > 4   # really quantised, not collapsed
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-30)
        qdq_pair = act.granularity == "per-tensor" and act.fmt.startswith(("int", "uint"))   # stays inline
        assert len(m.functions) == int(as_function and not qdq_pair)


@pytest.mark.parametrize("fmt", ["e5m10", "e2m3", "e3m2", "e2m1", "e3m4", "e4m3fn", "e5m2", "e3m0"])
def test_fp_rounding_ops_round_like_quant(fmt):
    """The in-graph FP rounding (float16 Cast round trip for E5M10, Veltkamp split + subnormal Round for the
    rest) is quant's RNE rounding on every grid point, every midpoint (ties), the float32 neighbours of each
    midpoint, values past max, subnormals and 10^5 random values, both signs."""
    import onnx
    import quant
    from runtimes.onnx.actquant import _Emitter, carrier
    from runtimes.onnx.functions import Body
    from runtimes.onnx.session import cpu_session
    f = quant.parse_format(fmt)
    assert (carrier(f) is not None) == (fmt == "e5m10")   # float16 only (runtimes.onnx.actquant._CARRIERS)
    g = f.grid().numpy()
    mid = ((g[1:].astype(np.float64) + g[:-1]) / 2).astype(np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate([g, mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(1e9)),
                        np.float32(f.max) * np.float32([1, 1 + 2 ** -23, 1.5, 1e3]),
                        np.exp(rng.uniform(-60, np.log(f.max), 10 ** 5)).astype(np.float32)]).astype(np.float32)
    x = np.concatenate([x, -x])
    body = Body(["x"])
    y = _Emitter(body).fp_round("x", f)
    m = onnx.helper.make_model(onnx.helper.make_graph(
        body.nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None])],
        [onnx.helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, [None])]),
        opset_imports=[onnx.helper.make_opsetid("", 21)])
    got = cpu_session(m.SerializeToString()).run(None, {"x": x})[0]
    ref = f.round(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, ref)
    ops = [n.op_type for n in m.graph.node if n.op_type != "Constant"]
    assert ops == (["Clip", "Cast", "Cast"] if carrier(f) else ["Clip", "Mul", "Sub", "Add", "Clip", "Add", "Sub",
                                                                 "Clip", "Sub", "Add"])   # no table, broadcast, Where


def test_e2m3_rounding_finished_by_quantize_linear_matches_quant():
    """The integer form's E2M3 codes (`_Emitter.round_above_step`, then QuantizeLinear at step 1/8 with zero
    point 128) are quant's RNE rounding × 8 + 128 on every grid point, midpoint (ties), their float32 neighbours,
    tiny values and 10^5 random values in [−max, max], both signs."""
    import onnx
    import quant
    from runtimes.onnx.actquant import _Emitter
    from runtimes.onnx.functions import Body
    from runtimes.onnx.session import cpu_session
    f = quant.parse_format("e2m3")
    g = f.grid().numpy()
    mid = ((g[1:].astype(np.float64) + g[:-1]) / 2).astype(np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate([g, mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(1e9)),
                        np.float32([1e-30, 1e-8, 2 ** -4, 2 ** -4 + 2 ** -20]),
                        rng.uniform(-f.max, f.max, 10 ** 5).astype(np.float32)]).astype(np.float32)
    x = np.concatenate([x, -x])
    body = Body(["x"])
    e = _Emitter(body)
    y = body.op("QuantizeLinear", e.round_above_step("x", f), e.c(1 / 8), e.c(128, np.uint8))
    m = onnx.helper.make_model(onnx.helper.make_graph(
        body.nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None])],
        [onnx.helper.make_tensor_value_info(y, onnx.TensorProto.UINT8, [None])]),
        opset_imports=[onnx.helper.make_opsetid("", 21)])
    got = cpu_session(m.SerializeToString()).run(None, {"x": x})[0].astype(np.int32) - 128
    ref = (f.round(torch.from_numpy(x)).numpy() * 8).astype(np.int32)
    np.testing.assert_array_equal(got, ref)


def test_per_token_fp16_grid_edge_tokens_match_quant(tmp_path):
    """Per-token E5M10/E2M3 through the carrier: all-zero tokens, tokens below the 1e-12 scale floor, exact
    maxima and dyadic values give quant's values bit for bit."""
    import onnx
    from runtimes.onnx.actquant import ActQuantOp
    from runtimes.onnx.export import export_onnx
    from runtimes.onnx.session import cpu_session
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((1, 6, 64)) * np.float32(3.0)).astype(np.float32)
    x[0, 0] = 0
    x[0, 1] *= np.float32(1e-10)             # amax/65504 below the scale floor
    x[0, 2, :8] = np.float32(65504.0)        # the max lands exactly on the top of the grid
    x[0, 3] = np.arange(64, dtype=np.float32) / 64 + np.float32(2 ** -11)   # a dyadic lattice: exact quotients
    for fmt in ("e5m10", "e2m3", "e3m2"):
        op = ActQuantOp(ActQuant(fmt, "per-token"))
        export_onnx(op, tuple(x.shape), tmp_path / "a.onnx", opset=20, dynamic_batch=True)
        m = onnx.load(str(tmp_path / "a.onnx"))
        assert sum(n.op_type == "Cast" for n in m.graph.node) == (2 if fmt == "e5m10" else 0)
        got = cpu_session(m.SerializeToString()).run(None, {"input": x})[0]
        with torch.no_grad():
            ref = op(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(got, ref)


def test_vit_w8a8_quantises_every_activation_in_graph(tmp_path, images):
    """quant's default INT w8a8 (uint8 static activations, attention matmul inputs too) → QDQ graph."""
    import onnx
    q = _quantised("vit-tiny", "int", "w8a8")
    spec = spec_from_model(q)
    assert any(n.endswith("attn.q_quant") for n in spec.acts) and len(spec.acts) > len(spec.layers)
    art = _export(q, tmp_path / "q", images, spec)
    ops = [n.op_type for n in onnx.load(str(art.entry)).graph.node]
    assert ops.count("QuantizeLinear") == len(spec.acts)
    assert art.manifest["quant"]["graph_form"] == "qdq-int8"
    assert art.manifest["parity"]["metrics"]["top1_agreement"] >= 0.995
    assert art.manifest["quant"]["precision"] == "w8a8"
    import quant
    from runtimes.onnx.quantized import float_twin   # other exporters' twin: low-bit weights, float activations
    assert not any(isinstance(m, quant.ActQuantizer) for m in float_twin(q, spec).modules())


def test_cnn_integer_form_requantises_and_keeps_parity(tmp_path, images):
    import onnx
    q = _quantised("mobilenet-mini", "int", "w8a8")
    spec = spec_from_model(q)
    calib = load_data("fashion-mnist:64", PRE, "train", seed=0)[0].numpy()
    exact = _export(q, tmp_path / "e", images, spec)
    integer = _export(q, tmp_path / "i", images, spec, graph_form="integer", calib_inputs=calib)
    added = integer.manifest["quant"]["requantised_outputs"]
    assert added > 0
    n = [sum(o.op_type == "QuantizeLinear" for o in onnx.load(str(a.entry)).graph.node) for a in (exact, integer)]
    assert n[1] == n[0] + added
    assert integer.manifest["parity"]["metrics"]["top1_agreement"] >= 0.995
    # the head runs on integer kernels too: pooled features on the head quantiser's grid, an int32 bias
    assert integer.manifest["quant"]["int32_biases"] == 1
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(integer.entry), so, providers=["CPUExecutionProvider"])
    ops = {o.op_type for o in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert {"QGemm", "QLinearGlobalAveragePool"} <= ops and not {"Gemm", "GlobalAveragePool"} & ops, ops
    fp8 = _quantised("vit-tiny", "fp8", "w8a8")
    with pytest.raises(ExportError, match="integer graph form needs int8"):
        _export(fp8, tmp_path / "x", images, spec_from_model(fp8), graph_form="integer", calib_inputs=calib)
    assert not (tmp_path / "x").exists()


def test_fp4_w4a6_vit_exports_with_real_4bit_codes(tmp_path, images):
    q = _quantised("vit-tiny", "fp4", "w4a6")
    art = _export(q, tmp_path / "q", images, spec_from_model(q))
    layers = art.manifest["quant"]["layers"]
    # linears on int8 kernels (E2M1×2 weights, E2M3×8 per-token inputs); the patch conv (per-pixel scales do not
    # factor out of a conv) and the head (a Gemm on the class token) keep the LUT form
    assert {l["encoding"] for l in layers} == {"int8-matmul-fp4_e2m1", "packed-lut-fp4_e2m1"}
    assert [l["name"] for l in layers if l["encoding"].startswith("packed")] == ["patch_embed.proj", "head"]
    assert {l["scale_dtype"] for l in layers} == {"float16"}
    assert art.manifest["parity"]["metrics"]["top1_agreement"] >= 0.99
    flt = _export(q, tmp_path / "f", images, spec_from_model(q), graph_form="float-matmul")
    assert {l["encoding"] for l in flt.manifest["quant"]["layers"]} == {"packed-lut-fp4_e2m1"}
    assert art.size_bytes <= flt.size_bytes * 1.02   # the int8 weights are decoded at session creation


def test_weight_only_graphs_decode_weights_at_session_creation(tmp_path, images):
    """INT W4A32 (weight-only: w4a16 is 16-bit integer activations in the int family) writes packed int4 codes
    whose plain-op decoder onnxruntime folds at load; no DequantizeLinear, which onnxruntime would keep (for its
    QDQ fusions) and run on every inference."""
    import onnx
    q = _quantised("vit-tiny", "int", "w4a32")
    assert spec_from_model(q).acts == {}
    art = _export(q, tmp_path / "q", images, spec_from_model(q))
    assert {l["encoding"] for l in art.manifest["quant"]["layers"]} == {"packed-int4"}
    assert not any(n.op_type == "DequantizeLinear" for n in onnx.load(str(art.entry)).graph.node)
    assert art.manifest["parity"]["metrics"]["top1_agreement"] >= 0.99


@pytest.mark.parametrize("fan_in", [64, 192, 256])   # one group, ragged groups (128 + 64), two whole groups
def test_fp4_w4a6_integer_matmul_matches_torch(tmp_path, fan_in):
    """The int8 form of an FP4 W4A6 linear (exact int32 sums, scales outside) equals the fake-quant F.linear up to
    float32 rounding, per channel and per group of 128 (ragged last group too)."""
    import onnx
    import quant
    from runtimes.onnx.quantized import export_quantized_onnx
    from runtimes.onnx.session import cpu_session
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(fan_in, 48)).eval()
    x = torch.randn(4, 9, fan_in) * torch.logspace(-2, 1, fan_in)
    q = quant.quantize_model(model, quant.parse_spec("fp4", "w4a6", None, ()), x)
    export_quantized_onnx(q, spec_from_model(q), (1, 9, fan_in), tmp_path / "m.onnx")
    m = onnx.load(str(tmp_path / "m.onnx"))
    assert [n.op_type for n in m.graph.node if n.domain == "edgevit"][-1].startswith("imm_e2m3_fp4_e2m1")
    got = cpu_session(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = q(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


def test_parity_failure_writes_nothing(tmp_path, images):
    model = _model("vit-tiny")
    spec = _spec(model, "int4")
    wrong = QuantSpec(spec.precision, {k: LayerQuant("int4", v.q, v.scale * 1.5) for k, v in spec.layers.items()})
    # the torch reference is the float model, the graph has 1.5x scales: parity must fail
    with pytest.raises(ParityError, match="export refused"):
        _export(_FakeQuant(model, spec), tmp_path / "bad",
                images, QuantSpec(wrong.precision, {f"m.{k}": v for k, v in wrong.layers.items()}))
    assert list(tmp_path.iterdir()) == []


def test_bad_spec_is_rejected():
    with pytest.raises(ExportError, match="int2..int8"):
        LayerQuant("int9", np.zeros((2, 2)), np.ones(2))
    with pytest.raises(ExportError, match="integers in"):
        LayerQuant("int4", np.full((2, 2), 9.0), np.ones(2))
    with pytest.raises(ExportError, match="activation format"):
        ActQuant("int9", "per-token")
    with pytest.raises(ExportError, match="needs its calibrated scale"):
        ActQuant("uint8", "per-tensor")
    with pytest.raises(ExportError, match="not on the fp4_e2m1 grid"):
        from runtimes.onnx.quantspec import fp_grid_codes
        fp_grid_codes("fp4_e2m1", np.array([0.7], np.float32))


def test_cli_run_and_errors(tmp_path, images, cli_runner):
    from PIL import Image
    from edgevit.cli import cli
    _export(_model("vit-tiny"), tmp_path / "a", images)
    from edgevit.data.fashion_mnist import load_fashion_mnist
    img = tmp_path / "x.png"
    Image.fromarray(load_fashion_mnist("test")[0][0]).save(img)
    r = cli_runner.invoke(cli, ["run", str(tmp_path / "a"), str(img), "--json"])
    assert r.exit_code == 0, r.output
    import json
    top = json.loads(r.output)[0]["top"]
    assert len(top) == 5 and top[0]["label"] in LABELS
    # runtime-side (Pillow+numpy) preprocessing gives the same logits as edgevit's torch preprocessing
    from runtimes.preprocess import load_images
    np.testing.assert_allclose(load_images([img], PRE.to_dict())[0], PRE(load_fashion_mnist("test")[0][:1])[0].numpy(),
                               atol=1e-5)
    (tmp_path / "a" / "model.onnx").write_bytes(b"junk")
    r = cli_runner.invoke(cli, ["run", str(tmp_path / "a"), str(img)])
    assert r.exit_code == 2 and "sha256" in r.output
    r = cli_runner.invoke(cli, ["export", "vit-tiny", "--runtime", "onnx", "--precision", "w8a8", "--out", str(tmp_path / "t")])
    assert r.exit_code == 2 and "edgevit quantize" in r.output and not (tmp_path / "t").exists()


@pytest.mark.slow
def test_cli_quantize_export_parity_run_bench(tmp_path, cli_runner):
    """The user's path on a trained model: quantize → export → check-parity → run → bench."""
    import json
    from PIL import Image
    from edgevit.cli import cli
    from edgevit.data.fashion_mnist import load_fashion_mnist
    q, a8, f32 = tmp_path / "q8", tmp_path / "a8", tmp_path / "f32"
    steps = [["quantize", "mobilenet-mini", "--fmt", "int", "--bits", "w8a8", "--out", str(q), "--eval-limit", "200"],
             ["export", str(q), "--out", str(a8), "--parity-data", "fashion-mnist:512"],
             ["export", "mobilenet-mini", "--out", str(f32), "--parity-data", "fashion-mnist:64"],
             ["check-parity", str(a8), "--data", "fashion-mnist:512"]]
    for args in steps:
        r = cli_runner.invoke(cli, args)
        assert r.exit_code == 0, (args, r.output)
    img = tmp_path / "x.png"
    Image.fromarray(load_fashion_mnist("test")[0][1]).save(img)
    r = cli_runner.invoke(cli, ["run", str(a8), str(img), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)[0]["top"][0]["label"] in LABELS
    r = cli_runner.invoke(cli, ["bench", str(f32), str(a8), "--iters", "20", "--warmup", "2",
                                "--json", "--save", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)                                  # stdout is only the JSON (progress on stderr)
    assert json.loads((tmp_path / "b.json").read_text()) == rows
    assert [row["precision"] for row in rows] == ["fp32", "w8a8"] and rows[1]["file_bytes"] < rows[0]["file_bytes"] / 3
    r = cli_runner.invoke(cli, ["export", str(q), "--out", str(tmp_path / "bad"), "--graph-form", "integer",
                                "--calib-data", "nope:1"])
    assert r.exit_code == 2 and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("fmt,bits", [("int", "w8a8"), ("int", "w4a8"), ("int", "w3a8"), ("fp4", "w4a6"), ("fp6", "w6a6"),
                                      ("mxfp4", "w4a4")])
def test_ragged_last_group_is_exact(tmp_path, fmt, bits):
    """fan_in 247 in groups of 128 (as split pruning leaves): quant pads the last group; ORT equals torch."""
    import onnx
    import onnxruntime as ort
    import quant
    from runtimes.onnx.quantized import export_quantized_onnx
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(247, 24))
    # per-token activations (float ops, bit-exact) isolate the weight path; MX ones would need whole blocks
    recipe = {"act_format": "int8", "act_granularity": "token"}
    if not fmt.startswith("mx"):
        recipe.update(weight_granularity="group", group_size=128)
    qm = quant.quantize_model(lin, quant.parse_spec(fmt, bits, recipe, ()), torch.randn(8, 247))
    spec = spec_from_model(qm)
    (lq,) = spec.layers.values()
    assert lq.pad == 9 and lq.scale.shape[1] == 256 // lq.group_size   # 128-groups (MX: 32-blocks), last one short
    quant_block = export_quantized_onnx(qm, spec, (1, 247), tmp_path / "r.onnx")
    x = torch.randn(5, 247)
    so = ort.SessionOptions()
    for k, v in quant_block["runtime_options"].items():   # float activations into MatMulNBits, as the runner does
        so.add_session_config_entry(k, v)
    got = ort.InferenceSession(str(tmp_path / "r.onnx"), so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = qm(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(onnx.load(str(tmp_path / "r.onnx")), full_check=True)
    assert quant_block["layers"][0]["granularity"] == f"per-group-{lq.group_size}"


def test_ragged_groups_need_the_group_size():
    with pytest.raises(ExportError, match="group size"):
        LayerQuant("int4", np.zeros((2, 247)), np.ones((2, 2)))
    lq = LayerQuant("int4", np.ones((2, 247)), np.full((2, 2), 0.5), group=128)
    assert lq.dequantized().shape == (2, 247) and np.all(lq.dequantized() == 0.5)


def test_quantisers_are_local_functions_called_per_site(tmp_path, images):
    """One FunctionProto per quantiser kind, one call per site; ORT inlines them (parity holds)."""
    import onnx
    from runtimes.onnx.functions import DOMAIN
    q = _quantised("vit-tiny", "fp4", "w4a6")
    spec = spec_from_model(q)
    m = onnx.load(str(_export(q, tmp_path / "i", images, spec).entry))   # default: linears' quantisers in imm calls
    calls = [n.op_type for n in m.graph.node if n.domain == DOMAIN]
    assert sum(c.startswith(("aq_", "imm_")) for c in calls) == len(spec.acts)
    art = _export(q, tmp_path / "q", images, spec, graph_form="float-matmul")
    m = onnx.load(str(art.entry))
    calls = [n.op_type for n in m.graph.node if n.domain == DOMAIN]
    assert sum(c.startswith("aq_") for c in calls) == len(spec.acts)
    assert sum(c.startswith("dq_") for c in calls) == len(spec.layers)
    assert sorted(f.name for f in m.functions) == sorted(set(calls)) and len(m.functions) <= 4
    assert not {"BitShift", "Round", "ReduceMax"} & {n.op_type for n in m.graph.node}   # nothing left inline
    assert art.manifest["parity"]["metrics"]["top1_agreement"] >= 0.99


def test_static_shape_folding_keeps_dynamic_batch(tmp_path, images):
    import onnx
    art = _export(_model("vit-tiny"), tmp_path / "a", images)
    ops = [n.op_type for n in onnx.load(str(art.entry)).graph.node]
    assert ops.count("Shape") <= 2 and ops.count("Unsqueeze") <= 1   # the per-block reshape chains are folded
    runner = open_runner(load_artifact(tmp_path / "a"))
    with torch.no_grad():
        for n in (1, 5):
            ref = _model("vit-tiny")(torch.from_numpy(images[0][:n])).numpy()
            np.testing.assert_allclose(runner.run(images[0][:n]), ref, atol=1e-4)


def test_16bit_static_activations_export_as_int16_qdq(tmp_path, images):
    """int w4a16 (uint16 static activations: int16 storage, shifted zero point) exports and agrees."""
    import onnx
    q = _quantised("vit-tiny", "int", "w4a16")
    spec = spec_from_model(q)
    assert {a.fmt for a in spec.acts.values()} == {"uint16"}
    art = _export(q, tmp_path / "q", images, spec)
    m = onnx.load(str(art.entry))
    assert [f.name for f in m.functions] == ["aq_uint16_tensor"]
    assert art.manifest["parity"]["metrics"]["top1_agreement"] >= 0.99


def test_bench_peak_rss_is_the_workers_own(tmp_path, images):
    """runtimes.bench.bench_many's fresh process reports its own peak memory, not its parent's: with 400 MiB held
    here, vit-tiny's worker (onnxruntime and numpy, no torch) peaks far below it."""
    from runtimes.bench import _rss_kib, bench_many
    _export(_model("vit-tiny"), tmp_path / "a", images)
    held = np.ones(400 * 2 ** 20 // 8)   # touched: resident
    assert _rss_kib() / 1024 > 400
    row = bench_many([str(tmp_path / "a")], iters=3, warmup=1)[0]
    assert 0 < row["peak_rss_mib"] < _rss_kib() / 1024 - 200 and row["session_rss_mib"] > 0
    del held


def test_binade_is_exact_at_every_power_of_two():
    """MX's shared exponent ⌊log2 amax⌋ (`_Emitter.binade`: float32 Log, then one exact correction each way) on
    every power of two 2^-126..2^127, both float32 neighbours, and 10^5 random magnitudes: equal to frexp's."""
    import onnx
    from runtimes.onnx.actquant import _Emitter
    from runtimes.onnx.functions import Body
    from runtimes.onnx.session import cpu_session
    p = np.ldexp(np.float32(1), np.arange(-126, 128)).astype(np.float32)
    rng = np.random.default_rng(0)
    a = np.concatenate([p, np.nextafter(p, np.float32(0)), np.nextafter(p, np.float32(np.inf)),
                        np.exp(rng.uniform(-87, 88, 10 ** 5)).astype(np.float32)]).astype(np.float32)
    a = a[np.isfinite(a) & (a >= np.float32(2.0 ** -126))]
    body = Body(["a"])
    k = _Emitter(body).binade("a", -126, 127)
    m = onnx.helper.make_model(onnx.helper.make_graph(
        body.nodes, "g", [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [None])],
        [onnx.helper.make_tensor_value_info(k, onnx.TensorProto.INT64, [None])]),
        opset_imports=[onnx.helper.make_opsetid("", 21)])
    got = cpu_session(m.SerializeToString()).run(None, {"a": a})[0]
    np.testing.assert_array_equal(got, np.frexp(a)[1] - 1 + 126)


def test_mx_blocks_with_unknown_feature_size_match_quant():
    """Where the tracer lost an activation's feature size (timm's LayerNorm outputs), MX blocks are reshaped as
    (…, −1, block): the same values as quant's quantiser."""
    import onnx
    from runtimes.onnx.actquant import _Emitter, reference_quantizer
    from runtimes.onnx.functions import Body
    from runtimes.onnx.session import cpu_session
    aq = ActQuant("mxfp4", "block")
    body = Body(["x"])
    y = _Emitter(body).mx("x", aq.format, -1, (3, None))
    m = onnx.helper.make_model(onnx.helper.make_graph(
        body.nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, None, None])],
        [onnx.helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, [None, None, None])]),
        opset_imports=[onnx.helper.make_opsetid("", 21)])
    x = torch.randn(2, 5, 96) * torch.logspace(-3, 2, 96)
    got = cpu_session(m.SerializeToString()).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_array_equal(got, reference_quantizer(aq)(x).numpy())
