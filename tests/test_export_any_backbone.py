"""Quantised ONNX export of any module structure: each layer's weight is found by construction (a named
graph input through the TorchScript export), never by value; BatchNorms after quantised conv/linear layers
are found with torch.fx whatever module holds them; exporter failures name the module and the fallback."""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

import quant
from quant.bn import norm_pairs
from runtimes import parity
from runtimes.errors import ExportFailure
from runtimes.onnx.quantized import ORT_SESSION_CONFIG, _Graph, _rewrite_layer, export_quantized_onnx, fold_batchnorm
from runtimes.onnx.quantspec import LayerQuant, spec_from_model
from runtimes.onnx.session import cpu_session

torch.set_num_threads(1)
SHAPE = (1, 3, 16, 16)


def _bn(c, cls=nn.BatchNorm2d):
    bn = cls(c)
    with torch.no_grad():   # non-trivial statistics, so a BatchNorm lost or applied twice shows
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    return bn


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's norm+activation module (same class name and children): normalise, dropout, activation."""

    def __init__(self, c):
        super().__init__(c)
        self.load_state_dict(_bn(c).state_dict())
        self.drop = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x):
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self.act(self.drop(x))


class ConvNorm(nn.Module):
    """conv → norm held as attributes, not an nn.Sequential (timm's ConvNormAct, a ResNet block's conv1/bn1)."""

    def __init__(self, cin, cout, norm_act=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = BatchNormAct2d(cout) if norm_act else _bn(cout)
        self.act = nn.Identity() if norm_act else nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class LinearNorm(nn.Module):
    """LeViT's Linear → BatchNorm1d over the tokens flattened to rows."""

    def __init__(self, cin, cout):
        super().__init__()
        self.linear = nn.Linear(cin, cout)
        self.bn = _bn(cout, nn.BatchNorm1d)

    def forward(self, x):
        return self.bn(self.linear(x).flatten(0, 1)).reshape(x.shape[0], x.shape[1], -1)


class Net(nn.Module):
    def __init__(self, branchy=False):
        super().__init__()
        self.branchy = branchy
        self.stem = ConvNorm(3, 8)
        self.block = ConvNorm(8, 8, norm_act=True)
        self.mix = LinearNorm(8, 16)
        self.fc = nn.Linear(16, 16)
        self.bn1d = _bn(16, nn.BatchNorm1d)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.block(self.stem(x))
        if self.branchy and x.sum() > 1e9:   # data-dependent: fx cannot trace the whole model
            x = -x
        t = self.mix(x.flatten(2).transpose(1, 2)).mean(1)
        return self.head(torch.relu(self.bn1d(self.fc(t))))


def _quantised(model, family, bits):
    torch.manual_seed(0)
    calib = torch.randn(32, *SHAPE[1:])
    return quant.quantize_model(model.eval(), quant.parse_spec(family, bits, None, ()), calib)


def _parity(qmodel, path):
    x = torch.randn(48, *SHAPE[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = qmodel(x).numpy()
    sess = cpu_session(str(path), config=ORT_SESSION_CONFIG)   # as the manifest asks
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return parity.compare(ref, got)


EXPECTED_PAIRS = {("stem.conv", "stem.bn"), ("block.conv", "block.bn"), ("mix.linear", "mix.bn"), ("fc", "bn1d")}


@pytest.mark.parametrize("branchy", [False, True], ids=["whole-graph", "per-parent"])
def test_norm_pairs_found_in_any_module_structure(branchy):
    torch.manual_seed(0)
    model = Net(branchy).eval()
    pairs = norm_pairs(model, torch.zeros(SHAPE))
    found = {(p.layer, p.norm) for p in pairs}
    # untraceable as a whole: each BatchNorm's parent is traced alone (the top-level fc → bn1d pair is lost)
    assert found == (EXPECTED_PAIRS - {("fc", "bn1d")} if branchy else EXPECTED_PAIRS)
    assert {p.layer: p.view for p in pairs}.get("mix.linear") == (1, -1)
    assert {p.layer: p.view for p in pairs}["stem.conv"] == (1, -1, 1, 1)


def test_norm_pairs_skip_layers_with_other_readers():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), _bn(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y   # folding bn into conv would change the skip's value

    assert norm_pairs(TwoReaders().eval(), torch.zeros(SHAPE)) == []


@pytest.mark.parametrize("family,bits,folded", [("int", "w8a8", True), ("int", "w8a16", False), ("fp4", "w4a6", False)])
@pytest.mark.parametrize("branchy", [False, True], ids=["whole-graph", "per-parent"])
def test_conv_and_linear_norms_outside_sequential_export(tmp_path, family, bits, folded, branchy):
    torch.manual_seed(0)
    qmodel = _quantised(Net(branchy), family, bits)
    spec = spec_from_model(qmodel)
    block = export_quantized_onnx(qmodel, spec, SHAPE, tmp_path / "m.onnx")
    m = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in m.graph.input] == ["input"]                    # every weight input replaced
    assert {l["op"] for l in block["layers"]} <= {"Conv", "Gemm", "MatMul", "MatMulIntegerToFloat"}
    assert len(block["layers"]) == len(spec.layers)
    n_bn = sum(n.op_type == "BatchNormalization" for n in m.graph.node)
    assert n_bn == (1 if branchy else 0)                                   # only the unpaired bn1d stays a BN
    if folded:   # static 8-bit activations: folded into the weight scales, weights feed their ops directly
        producers = {o: n for n in m.graph.node for o in n.output}
        for n in m.graph.node:
            if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in producers:
                assert producers[n.input[1]].op_type == "DequantizeLinear"
        zps = [n.input[2] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith(".q")]
        assert len(zps) == len(set(zps)) == len(spec.layers)                # one explicit int8 zero point per layer
    metrics = _parity(qmodel, tmp_path / "m.onnx")
    th = parity.THRESHOLDS[parity.precision_class(spec.precision)]
    assert parity.failures(metrics, th) == [], metrics


def test_identical_weights_are_told_apart(tmp_path):
    """Two layers with the same weights: by value they cannot be told apart, by construction they can."""
    class Twins(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(48, 48), nn.Linear(48, 48)
            self.b.load_state_dict(self.a.state_dict())
            self.head = nn.Linear(48, 10)

        def forward(self, x):
            t = x.flatten(2).mean(-1).repeat(1, 16)
            return self.head(self.b(torch.relu(self.a(t))))

    torch.manual_seed(0)
    qmodel = _quantised(Twins(), "int", "w8a16")
    spec = spec_from_model(qmodel)
    block = export_quantized_onnx(qmodel, spec, SHAPE, tmp_path / "m.onnx")
    assert [l["name"] for l in block["layers"]] == ["a", "b", "head"]
    assert parity.failures(_parity(qmodel, tmp_path / "m.onnx"), parity.THRESHOLDS["int8"]) == []


@pytest.mark.parametrize("bits", ["w8a8", "w8a16"])
def test_module_called_twice_gets_a_decoder_per_call(tmp_path, bits):
    """CoaT shares one position-encoding conv across blocks: each call reads its own int8 codes, or
    onnxruntime's in-place int8 rewrite fails to load the graph ("Attempt to replace the existing tensor")."""
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.pe = nn.Conv2d(3, 3, 3, padding=1, groups=3)
            self.fc = nn.Linear(3, 3)
            self.head = nn.Linear(3, 10)

        def forward(self, x):
            x = x + self.pe(x)
            x = x + self.pe(x)
            t = x.flatten(2).transpose(1, 2)
            t = t + self.fc(t)
            t = t + self.fc(t)
            return self.head(t.mean(1))

    torch.manual_seed(0)
    qmodel = _quantised(Shared(), "int", bits)
    spec = spec_from_model(qmodel)
    export_quantized_onnx(qmodel, spec, SHAPE, tmp_path / "m.onnx")
    m = onnx.load(str(tmp_path / "m.onnx"))
    codes = [n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear" and ".q" in n.input[0]]
    assert len(codes) == len(set(codes)) == 5   # pe ×2, fc ×2, head
    th = parity.THRESHOLDS[parity.precision_class(spec.precision)]
    assert parity.failures(_parity(qmodel, tmp_path / "m.onnx"), th) == []


def test_weight_through_identity_and_transpose_is_rewritten():
    """A weight input that reaches its MatMul through Identity and Transpose nodes: the decoder feeds the
    MatMul directly, in the orientation the MatMul read, and the nodes in between go."""
    from onnx import TensorProto as T
    from onnx import helper
    w = np.arange(12, dtype=np.float32).reshape(3, 4) - 6   # torch layout (out, in)
    g = helper.make_graph(
        [helper.make_node("Identity", ["fc.weight"], ["w1"]), helper.make_node("Transpose", ["w1"], ["wt"], perm=[1, 0]),
         helper.make_node("Identity", ["wt"], ["w2"]), helper.make_node("MatMul", ["x", "w2"], ["y"])],
        "g", [helper.make_tensor_value_info("x", T.FLOAT, [2, 4]), helper.make_tensor_value_info("fc.weight", T.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    graph = _Graph(m)
    row = _rewrite_layer(graph, "fc", LayerQuant("int8", w, np.ones(3, np.float32)), 21)
    graph.prune()
    assert row["op"] == "MatMul" and [n.op_type for n in m.graph.node] == ["DequantizeLinear", "MatMul"]
    assert [i.name for i in m.graph.input] == ["x"]
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    got = cpu_session(m.SerializeToString(), config=ORT_SESSION_CONFIG).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-6)


def test_export_failure_names_the_module_and_the_fallback(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cummax(x, -1)[0]   # no ONNX symbolic in the TorchScript exporter

    class Net2(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.odd = Odd()
            self.head = nn.Linear(4, 10)

        def forward(self, x):
            return self.head(self.odd(self.conv(x)).mean((2, 3)))

    qmodel = _quantised(Net2(), "int", "w8a16")
    with pytest.raises(ExportFailure) as e:
        export_quantized_onnx(qmodel, spec_from_model(qmodel), SHAPE, tmp_path / "m.onnx")
    msg = str(e.value)
    assert "\n" not in msg and "module odd" in msg and "cummax" in msg and "dynamo" in msg
    assert not (tmp_path / "m.onnx").exists()
    from edgevit.artifacts import runtime_errors
    from edgevit.errors import StageError
    with pytest.raises(StageError), runtime_errors():   # exit 1 at the CLI: the stage failed, the input was fine
        raise ExportFailure("module odd: ...")


def test_fold_keeps_norm_activation_and_names():
    torch.manual_seed(0)
    qmodel = _quantised(Net(), "int", "w8a8")
    spec = spec_from_model(qmodel)
    folded, fspec = fold_batchnorm(qmodel, spec, fold=True, input_shape=SHAPE)
    assert isinstance(folded.block.bn.act, nn.ReLU)            # BatchNormAct2d keeps its activation, same name
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert not np.array_equal(fspec.layers["stem.conv"].scale, spec.layers["stem.conv"].scale)
    np.testing.assert_array_equal(fspec.layers["stem.conv"].q, spec.layers["stem.conv"].q)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mobilenetv3_small_100", "levit_128s"])
def test_timm_quantize_export_parity(tmp_path, cli_runner, arch):
    from edgevit.cli import cli
    from edgevit.errors import UsageError
    from edgevit.models.timm_models import import_timm
    try:
        import_timm()   # with the torchvision stub the registry's timm: loader registers
    except UsageError:
        pytest.skip("timm is not installed")
    q, art = tmp_path / "q", tmp_path / "onnx"
    r = cli_runner.invoke(cli, ["quantize", f"timm:{arch}", "--bits", "w8a16", "--calib", "photos:8",
                                "--eval-data", "photos:8", "--out", str(q)])
    assert r.exit_code == 0, r.output
    r = cli_runner.invoke(cli, ["export", str(q), "--runtime", "onnx", "--parity-data", "photos:16", "--out", str(art)])
    assert r.exit_code == 0, r.output
    r = cli_runner.invoke(cli, ["check-parity", str(art), "--data", "photos:16"])
    assert r.exit_code == 0 and "parity OK" in r.output, r.output


@pytest.mark.slow
def test_real_mobilenetv2_w8a8_exports_within_its_own_float_order_noise(tmp_path, cli_runner):
    """Real-weight MobileNetV2 W8A8: its static 8-bit rounding amplifies float op order, so torch in float32 is
    itself ~22 dB from float64 and onnxruntime as far (it failed the fixed 25 dB bar). The export passes with
    the bar following that noise, records it, and check-parity applies the same bar; top-1 stays strict."""
    from edgevit.cli import cli
    from edgevit.errors import UsageError
    from edgevit.models.registry import load_model
    try:
        load_model("mobilenetv2")
    except UsageError:
        pytest.skip("the MobileNetV2 weights package is not installed")
    q, art = tmp_path / "q", tmp_path / "onnx"
    r = cli_runner.invoke(cli, ["quantize", "mobilenetv2", "--bits", "w8a8",
                                "--eval-data", "photos:8", "--out", str(q)])
    assert r.exit_code == 0, r.output
    r = cli_runner.invoke(cli, ["export", str(q), "--runtime", "onnx", "--parity-data", "photos:64", "--out", str(art)])
    assert r.exit_code == 0, r.output
    import json
    p = json.loads((art / "manifest.json").read_text())["parity"]
    own = p["reference_float64"]["sqnr_db"]
    assert own < parity.THRESHOLDS["int8"]["sqnr_db"]                         # the reference's own noise
    assert p["thresholds"]["sqnr_db"] == max(round(own - parity.REALISATION_MARGIN_DB, 1), parity.MIN_SQNR_DB)
    assert p["thresholds"]["top1_agreement"] == parity.THRESHOLDS["int8"]["top1_agreement"]
    assert p["metrics"]["top1_agreement_decisive"] >= 0.995
    r = cli_runner.invoke(cli, ["check-parity", str(art), "--data", "photos:64"])
    assert r.exit_code == 0 and "parity OK" in r.output, r.output
