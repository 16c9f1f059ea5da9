"""QNN bundle pieces without the HTP emulator: SoC table, QNN-legality checks, edgevit encodings carried
into the QDQ graph (codes, scales, zero points), AIMET encodings JSON, the missing-extra message."""
from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import quant
from runtimes.errors import ExportError, RuntimeArtifactError
from runtimes.onnx.quantspec import ActQuant, LayerQuant, QuantSpec, spec_from_model
from runtimes.qnn.bundle import build_qdq, check_spec, check_static
from runtimes.qnn.compile import SOCS, parse_soc
from runtimes.qnn.encodings import encodings_from_qdq
from runtimes.qnn.errors import QnnExportError, QnnMissing, require_qnn

pytest.importorskip("onnxruntime.quantization")


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 10, 1), nn.Flatten()).eval()


@pytest.fixture(scope="module")
def calib():
    return np.random.default_rng(0).standard_normal((16, 1, 12, 12)).astype(np.float32)


def _qdq(tmp_path, model, calib, precision=None):
    ref, info = build_qdq(model, (1, 1, 12, 12), tmp_path, calib, precision)
    return ref, info, onnx.load(str(info.qdq_path))


def test_soc_table_maps_parts_to_htp_generations():
    assert parse_soc("sm8650").htp_arch == 75 and parse_soc("SM8550").htp_arch == 73
    assert {s.htp_arch for s in SOCS.values()} >= {68, 69, 73, 75, 79, 81}
    with pytest.raises(ExportError, match="SM8650"):
        parse_soc("SM9999")


def test_rejects_what_qnn_cannot_encode():
    w = LayerQuant("int8", np.ones((4, 4), np.float32), np.ones(4, np.float32))
    ok = ActQuant("uint8", "per-tensor", 0.1, 3)
    assert check_spec(QuantSpec("w8a8", {"l": w}, {"l.input_quant": ok})) == "uint8"
    fp = LayerQuant("fp8_e4m3", np.ones((4, 4), np.float32), np.ones(4, np.float32))
    with pytest.raises(QnnExportError, match="--fmt int"):
        check_spec(QuantSpec("w8a8", {"l": fp}, {}))
    with pytest.raises(QnnExportError, match="static"):
        check_spec(QuantSpec("w8a8", {"l": w}, {"a": ActQuant("int8", "per-token")}))
    grouped = LayerQuant("int4", np.ones((4, 8), np.float32), np.ones((4, 2), np.float32))
    with pytest.raises(QnnExportError, match="per-channel"):
        check_spec(QuantSpec("w4a16", {"l": grouped}, {}))


def test_w8a8_scales_and_codes_are_carried(tmp_path, calib):
    qmodel = quant.quantize_model(tiny_cnn(), quant.parse_spec("int", "w8a8", None, ()), torch.from_numpy(calib))
    spec = spec_from_model(qmodel)
    _, info, qdq = _qdq(tmp_path, qmodel, calib)
    assert info.codes_exact and len(info.weights) == 3 and len(info.activations) == 3 and not info.conflicts
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    for init, w in info.weights.items():   # per-channel int8, edgevit's scales bit for bit
        assert inits[f"{init}_quantized"].dtype == np.int8
        np.testing.assert_array_equal(inits[f"{init}_scale"], spec.layers[w["layer"]].scale[:, 0])
    q_nodes = {n.input[0]: n for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    for tensor, qname in info.activations.items():
        aq = spec.acts[qname]
        node = q_nodes[tensor]
        assert float(inits[node.input[1]]) == np.float32(aq.scale)
        assert int(inits[node.input[2]]) == aq.zero_point and inits[node.input[2]].dtype == np.uint8


def test_adaptive_rounding_survives(tmp_path, calib):
    """Codes that are not round-to-nearest (as AdaRound leaves them) come out of the QDQ graph unchanged."""
    qmodel = quant.quantize_model(tiny_cnn(), quant.parse_spec("int", "w8a16", None, ()), torch.from_numpy(calib))
    for m in qmodel.modules():
        if getattr(m, "weight_quant", None) is not None:
            m.weight_quant.rounding = lambda x, fmt: torch.clamp(torch.floor(x), fmt.qmin, fmt.qmax)
    floor_codes = {n: lq.q for n, lq in spec_from_model(qmodel).layers.items()}
    _, info, qdq = _qdq(tmp_path, qmodel, calib)
    assert info.codes_exact
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    first = next(iter(info.weights))
    codes = inits[f"{first}_quantized"].astype(np.float32)
    np.testing.assert_array_equal(codes, floor_codes[info.weights[first]["layer"]].reshape(codes.shape))


def test_w4a16_float_model_is_quantised_by_edgevit(tmp_path, calib):
    ref, info, qdq = _qdq(tmp_path, tiny_cnn(), calib, "w4a16")
    assert info.codes_exact and info.activation_type == "uint16"
    assert any(isinstance(m, quant.ActQuantizer) for m in ref.modules())   # the fake-quant reference
    types = {i.data_type for i in qdq.graph.initializer if i.name.endswith("_quantized")}
    assert onnx.TensorProto.INT4 in types


class _Residual(nn.Module):
    """Conv → BN → ReLU, then a block adding a 1x1 conv back: tensors edgevit's quantisers never round."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return x + self.conv(x)

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = self.Block()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


@pytest.mark.parametrize("precision", ["w8a8", "w8a16"])
def test_reference_rounds_what_the_qdq_graph_rounds(tmp_path, calib, precision):
    """The returned reference models the recipe's extra encodings: it matches the QDQ graph run
    unfused on the CPU EP to a fraction of one output step; edgevit's bare fake-quant model does not."""
    import onnxruntime as ort
    model = _Residual().eval()
    with torch.no_grad():
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
        model.stem[1].running_var.uniform_(0.5, 2.0)
    qmodel = quant.quantize_model(model, quant.parse_spec("int", precision, None, ()), torch.from_numpy(calib))
    ref, info, qdq = _qdq(tmp_path, qmodel, calib)
    glue = info.glue
    assert glue["recipe_encodings"] >= 3 and glue["matched_to_modules"] == glue["recipe_encodings"] and glue["modelled_in_reference"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(info.qdq_path), so, providers=["CPUExecutionProvider"])
    x = 1.5 * np.random.default_rng(3).standard_normal((24, 1, 12, 12)).astype(np.float32)
    graph = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        with_glue, bare = ref(torch.from_numpy(x)).numpy(), qmodel(torch.from_numpy(x)).numpy()
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    out_q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith(qdq.graph.output[0].name))
    step = float(inits[out_q.input[1]])
    assert np.abs(with_glue - graph).max() <= 1.01 * step
    assert np.abs(bare - graph).max() > 2 * step


def test_reference_is_left_alone_when_a_rounded_tensor_has_no_module(tmp_path, calib):
    """A residual sum written in the root's forward has no module output: nothing is half-modelled."""
    class Flat(_Residual):
        def forward(self, x):
            x = self.stem(x)
            return self.head(x + self.block.conv(x))
    qmodel = quant.quantize_model(Flat().eval(), quant.parse_spec("int", "w8a8", None, ()), torch.from_numpy(calib))
    ref, info, _ = _qdq(tmp_path, qmodel, calib)
    assert not info.glue["modelled_in_reference"] and info.glue["unmatched"] == ["/Add_output_0"]
    assert ref is qmodel


def test_encodings_follow_aimet_convention(tmp_path, calib):
    qmodel = quant.quantize_model(tiny_cnn(), quant.parse_spec("int", "w8a8", None, ()), torch.from_numpy(calib))
    _, info, _ = _qdq(tmp_path, qmodel, calib)
    enc = encodings_from_qdq(info.qdq_path, info.float_path)
    json.dumps(enc)
    float_graph = onnx.load(str(info.float_path)).graph
    names = {i.name for i in float_graph.initializer} | {o for n in float_graph.node for o in n.output} | {"input"}
    assert enc["version"] == "1.0.0" and {e["name"] for e in enc["activation_encodings"]} <= names
    params = {p["name"]: p for p in enc["param_encodings"]}
    for init in info.weights:
        p = params[init]
        assert p["enc_type"] == "PER_CHANNEL" and p["bw"] == 8 and p["is_sym"] and set(p["offset"]) == {-128}
    acts = {a["name"]: a for a in enc["activation_encodings"]}
    spec = spec_from_model(qmodel)
    tensor, qname = next(iter(info.activations.items()))
    assert acts[tensor]["offset"] == [-spec.acts[qname].zero_point] and acts[tensor]["bw"] == 8


def test_dynamic_shapes_are_refused(tmp_path):
    from runtimes.onnx.export import export_onnx
    path = export_onnx(tiny_cnn(), (1, 1, 12, 12), tmp_path / "dyn.onnx", dynamic_batch=True)
    with pytest.raises(QnnExportError, match="static"):
        check_static(path)


def test_missing_extra_names_the_install(monkeypatch, tmp_path, calib):
    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)
    with pytest.raises(QnnMissing, match=r"pip install 'edgevit\[qnn\]'"):
        require_qnn()
    from runtimes.qnn.artifact import export_qnn_artifact
    out = tmp_path / "art"
    with pytest.raises(RuntimeArtifactError, match=r"edgevit\[qnn\]"):
        export_qnn_artifact(tiny_cnn(), out, input_shape=(1, 1, 12, 12), preprocess={}, labels=[],
                            parity_inputs=calib, calibration=calib)
    assert not out.exists()


class _TimmLike(nn.Module):
    """What the by-value search got wrong: a conv → BatchNorm held as attributes (timm's ConvNormAct), a conv
    called twice (CoaT's shared position encoding), two token Linears with identical weights (MatMul after a
    Transpose of the weight)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv, self.bn = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
        self.pe = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.b.load_state_dict(self.a.state_dict())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = x + self.pe(x)
        x = x + self.pe(x)
        t = x.permute(0, 2, 3, 1)   # channels last: a Linear on a 4-D tensor is MatMul(x, Transpose(W))
        return self.head(self.b(torch.relu(self.a(t))).mean((1, 2)))


@pytest.mark.parametrize("precision", ["w8a8", "w8a16"])
def test_weights_found_by_construction(tmp_path, calib, precision):
    """Each layer's weight is the float graph's initializer `<layer>.weight` (`.T` where read transposed),
    whatever the module structure, and equal weights of different layers stay apart."""
    import onnxruntime as ort
    qmodel = quant.quantize_model(_TimmLike().eval(), quant.parse_spec("int", precision, None, ()),
                                  torch.from_numpy(calib))
    ref, info, qdq = _qdq(tmp_path, qmodel, calib)
    assert info.codes_exact and not info.conflicts
    by_layer = {w["layer"]: (init, w["axis"]) for init, w in info.weights.items()}
    assert set(by_layer) == {"conv", "pe", "a", "b", "head"} and len(info.weights) == 5
    assert by_layer["conv"] == ("conv.weight", 0) and by_layer["pe"] == ("pe.weight", 0)
    assert by_layer["a"][0] != by_layer["b"][0]                       # identical values, two initializers
    fg = onnx.load(str(info.float_path)).graph
    assert [i.name for i in fg.input] == ["input"]
    assert not any(n.op_type in ("BatchNormalization", "Identity") for n in fg.node)  # BN folded
    assert {"a.bias", "b.bias", "conv.bias"} <= {i.name for i in fg.initializer}   # equal biases: a copy each
    int32 = {i.name for i in qdq.graph.initializer if i.data_type == onnx.TensorProto.INT32}
    assert {"conv.bias_quantized", "pe.bias_quantized"} <= int32                   # conv biases: int32
    assert len(info.activations) >= 5                                   # pe's input quantiser on both calls
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(info.qdq_path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).standard_normal((16, 1, 12, 12)).astype(np.float32)
    got = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    sqnr = -20 * np.log10(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert sqnr > (35 if precision == "w8a8" else 60), sqnr
    # pe's shared input encoding reaches below 0, so the Relu before it cannot be left to the encoding's clamp
    assert any(n.op_type == "Relu" for n in qdq.graph.node)


def _weight_graph(path_nodes, last):
    from onnx import TensorProto as T
    from onnx import helper
    g = helper.make_graph(
        [*path_nodes, last], "g",
        [helper.make_tensor_value_info("x", T.FLOAT, [2, 4]), helper.make_tensor_value_info("fc.weight", T.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_weight_through_identity_and_transpose_becomes_one_initializer():
    from onnx import helper
    from runtimes.qnn.bundle import weights_as_initializers
    w = np.arange(12, dtype=np.float32).reshape(3, 4) - 6
    m = _weight_graph([helper.make_node("Identity", ["fc.weight"], ["w1"]),
                       helper.make_node("Transpose", ["w1"], ["wt"], perm=[1, 0])],
                      helper.make_node("MatMul", ["x", "wt"], ["y"]))
    spec = QuantSpec("w8a16", {"fc": LayerQuant("int8", w, np.ones((3, 1), np.float32))}, {})
    sites = weights_as_initializers(m, spec)
    assert sites["fc"].inits == [("fc.weight", 1)] and [n.op_type for n in m.graph.node] == ["MatMul"]
    np.testing.assert_array_equal(numpy_helper.to_array(m.graph.initializer[0]), w.T)
    assert [i.name for i in m.graph.input] == ["x"]


def test_weight_not_read_by_a_matmul_names_the_layer():
    from onnx import helper
    from runtimes.qnn.bundle import weights_as_initializers
    w = np.ones((3, 4), np.float32)
    m = _weight_graph([helper.make_node("Mul", ["fc.weight", "fc.weight"], ["w2"], name="square")],
                      helper.make_node("MatMul", ["x", "w2"], ["y"]))
    spec = QuantSpec("w8a16", {"fc": LayerQuant("int8", w, np.ones((3, 1), np.float32))}, {})
    with pytest.raises(QnnExportError, match=r"layer fc: its weight feeds Mul \(square\).*--keep-float fc"):
        weights_as_initializers(m, spec)


def test_reshape_chains_fold_to_static_shapes(tmp_path, calib):
    """`x.flatten(2)` and `reshape(B, N, H, C // H)` export as Shape → Gather/Slice/Div → Concat → Reshape chains;
    at batch 1 they are constants, so the float graph is static (QNN compiles nothing else)."""
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.conv, self.fc, self.head = nn.Conv2d(1, 8, 4, stride=4), nn.Linear(8, 8), nn.Linear(4, 10)

        def forward(self, x):
            t = self.conv(x).flatten(2).transpose(1, 2)
            b, n, c = t.shape
            t = self.fc(t).reshape(b, n, 2, c // 2).mean(2)
            return self.head(t.mean(1))

    qmodel = quant.quantize_model(Tokens().eval(), quant.parse_spec("int", "w8a16", None, ()), torch.from_numpy(calib))
    _, info, _ = _qdq(tmp_path, qmodel, calib)
    ops = {n.op_type for n in onnx.load(str(info.float_path)).graph.node}
    assert "Shape" not in ops and info.codes_exact


def test_layernorm_gamma_is_unsigned_8bit(tmp_path, calib):
    """HTP refuses LayerNorm with a signed 8-bit gamma beside 16-bit activations (ConvNeXt's 17 norms went to CPU)."""
    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(4)
            self.conv, self.norm, self.head = nn.Conv2d(1, 8, 4, stride=4), nn.LayerNorm(8), nn.Linear(8, 10)

        def forward(self, x):
            return self.head(self.norm(self.conv(x).permute(0, 2, 3, 1)).mean((1, 2)))

    qmodel = quant.quantize_model(Norm().eval(), quant.parse_spec("int", "w8a16", None, ()), torch.from_numpy(calib))
    _, info, qdq = _qdq(tmp_path, qmodel, calib)
    ln = next(n for n in onnx.load(str(info.float_path)).graph.node if n.op_type == "LayerNormalization")
    dtype = {i.name: i.data_type for i in qdq.graph.initializer}
    assert dtype[f"{ln.input[1]}_quantized"] == onnx.TensorProto.UINT8
    assert all(dtype[f"{init}_quantized"] == onnx.TensorProto.INT8 for init in info.weights)   # edgevit's stay int8


def test_window_padding_arithmetic_folds(tmp_path, calib):
    """Swin pads to a whole number of windows with pads computed from the traced size (Shape, Mod, ConstantOfShape,
    Concat, Reshape, Slice, Transpose, Cast): evaluated at batch 1, the Pad reads constants and the graph is static."""
    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.conv, self.head = nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.Linear(8, 10)

        def forward(self, x):
            x = self.conv(x).permute(0, 2, 3, 1)
            h, w = x.shape[1:3]
            x = nn.functional.pad(x, (0, 0, 0, (4 - w % 4) % 4, 0, (4 - h % 4) % 4))
            return self.head(x.mean((1, 2)))

    qmodel = quant.quantize_model(Padded().eval(), quant.parse_spec("int", "w8a16", None, ()), torch.from_numpy(calib))
    _, info, _ = _qdq(tmp_path, qmodel, calib)
    g = onnx.load(str(info.float_path)).graph
    assert not {"Shape", "ConstantOfShape", "Mod"} & {n.op_type for n in g.node}
    pad = next(n for n in g.node if n.op_type == "Pad")
    pads = next(numpy_helper.to_array(i) for i in g.initializer if i.name == pad.input[1])
    assert pads.tolist() == [0, 0, 0, 0, 0, 2, 2, 0]   # 6x6 → 8x8


def test_layer_never_called_is_left_out(tmp_path, calib):
    """A quantised layer the forward never runs (an unused auxiliary head) has no weight in the graph: skipped."""
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(6)
            self.conv, self.head, self.aux = nn.Conv2d(1, 8, 3), nn.Linear(8, 10), nn.Linear(8, 10)

        def forward(self, x):
            return self.head(self.conv(x).mean((2, 3)))

    qmodel = quant.quantize_model(Aux().eval(), quant.parse_spec("int", "w8a16", None, ()), torch.from_numpy(calib))
    assert "aux" in spec_from_model(qmodel).layers   # quantised, weight and all, but never run
    _, info, _ = _qdq(tmp_path, qmodel, calib)
    assert info.codes_exact and {w["layer"] for w in info.weights.values()} == {"conv", "head"}
