"""TFLite (LiteRT) runtime: litert-torch export, ai-edge-quantizer int8, the interpreter's dtype check,
the runner, and the missing-extra message. Fast tests use a tiny CNN; `slow` ones the bundled models."""
import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

from runtimes.errors import ExportError, ParityError  # noqa: E402
from runtimes.tflite import TfliteUnavailable  # noqa: E402

PRE = {"size": 28, "channels": 1, "mean": [0.286], "std": [0.353]}


def _tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.standard_normal((48, 1, 28, 28)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory, images):
    """FP32 and w8a8 artifacts of the tiny CNN (converted once for the module)."""
    from runtimes.tflite.artifact import export_tflite_artifact
    root = tmp_path_factory.mktemp("tflite")
    model = _tiny_cnn()
    common = dict(input_shape=(1, 1, 28, 28), preprocess=PRE, labels=[str(i) for i in range(10)],
                  parity_inputs=images[:16], model_info={"name": "tiny-cnn"})
    fp32 = export_tflite_artifact(model, root / "fp32", **common)
    int8 = export_tflite_artifact(model, root / "w8a8", precision="w8a8", calibration=images[16:], **common)
    return model, fp32, int8


def test_fp32_export_matches_torch(tiny_artifacts, images):
    from runtimes.artifact import load_artifact
    from runtimes.tflite.runner import TfliteRunner
    model, fp32, _ = tiny_artifacts
    art = load_artifact(fp32.root)                       # manifest schema + sha256 of model.tflite
    assert art.runtime == "tflite" and art.entry.name == "model.tflite" and art.manifest["quant"] is None
    got = TfliteRunner(art).run(images[16:])            # images the export never saw
    with torch.no_grad():
        ref = model(torch.from_numpy(images[16:])).numpy()
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4


class _Embedded(nn.Module):
    """A position embedding stored as a transposed (non-contiguous) view, as the NPU rewrite's (1, C, 1, S)
    layout makes it, then a 1×1 conv."""

    def __init__(self, seed: int):
        super().__init__()
        self.proj = nn.Conv2d(32, 32, 1)
        self.pos = nn.Parameter(torch.randn(1, 16, 1, 32, generator=torch.Generator().manual_seed(seed)).permute(0, 3, 2, 1))

    def forward(self, x):
        return self.proj(x + self.pos)


class _TwoEmbeddings(nn.Module):
    """Two same-shaped non-contiguous embeddings (a split model's two devices): without the fix,
    litert-torch served one's values for the other in 3 of 8 conversions in one process."""

    def __init__(self):
        super().__init__()
        self.subs = nn.ModuleList([_Embedded(0), _Embedded(1)])

    def forward(self, x):
        return torch.cat([s(x).flatten(1) for s in self.subs], 1)


def test_non_contiguous_parameters_convert_exactly(tmp_path):
    from runtimes.tflite.convert import convert_fp32
    from runtimes.tflite.lower import lower_for_tflite
    from runtimes.tflite.runner import TfliteRunner
    from runtimes.artifact import Artifact
    model = _TwoEmbeddings().eval()
    assert not any(s.pos.is_contiguous() for s in model.subs)
    lowered, _ = lower_for_tflite(model)
    assert all(t.is_contiguous() for t in lowered.parameters()) and not model.subs[0].pos.is_contiguous()  # a copy
    x = torch.randn(1, 32, 1, 16)
    with torch.no_grad():
        ref = model(x).numpy()
    for i in range(6):   # the aliasing depended on allocator address reuse: several conversions in one process
        convert_fp32(lowered, tuple(x.shape), tmp_path / f"m{i}.tflite")
        got = TfliteRunner(Artifact(tmp_path, {"entry": f"m{i}.tflite"})).run(x.numpy())
        assert np.abs(got - ref).max() <= 1e-5


def test_int8_model_is_integer_end_to_end(tiny_artifacts):
    from runtimes.tflite.inspect import check_integer, integer_report
    _, fp32, int8 = tiny_artifacts
    rep = check_integer(int8.entry)
    assert rep["float_ops"] == [] and rep["tensor_dtypes"].get("int8", 0) > 0
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(rep["op_types"])   # real ops, not XNNPACK DELEGATE nodes
    assert int8.manifest["metrics"]["integer_ops"]["float_ops"] == 0
    assert int8.manifest["input"]["model_dtype"] == "int8" and int8.manifest["quant"]["precision"] == "w8a8"
    assert integer_report(fp32.entry)["float_ops"]                    # the check does see float ops
    with pytest.raises(ExportError, match="still compute in float"):
        check_integer(fp32.entry)


def test_int8_runner_quantizes_io_and_tracks_float(tiny_artifacts, images):
    from runtimes.tflite.runner import TfliteRunner
    model, _, int8 = tiny_artifacts
    got = TfliteRunner(int8).run(images[:16])
    with torch.no_grad():
        ref = model(torch.from_numpy(images[:16])).numpy()
    assert got.dtype == np.float32 and got.shape == ref.shape
    sqnr = 10 * np.log10(np.square(ref).sum() / np.square(ref - got).sum())
    assert sqnr > 15


def test_runner_through_open_runner_and_bench(tiny_artifacts, monkeypatch):
    from runtimes import runner as rt
    from runtimes.bench import bench_one
    monkeypatch.setitem(rt.RUNNERS, "tflite", "runtimes.tflite.runner:TfliteRunner")   # what the lead wires in
    _, fp32, _ = tiny_artifacts
    logits = rt.run_batched(rt.open_runner(fp32.root), np.zeros((3, 1, 28, 28), np.float32), 1)
    assert logits.shape == (3, 10)
    row = bench_one(str(fp32.root), warmup=1, iters=3)
    assert row["runtime"] == "tflite" and row["p50_ms"] > 0


def test_quantize_input_rounds_half_even_and_saturates():
    from runtimes.tflite.runner import quantize_input
    q = quantize_input(np.array([0.25, 0.75, -0.25, 100.0, -100.0], np.float32), np.dtype(np.int8), 0.5, 3)
    assert q.tolist() == [3, 5, 3, 127, -128]


def test_bad_precision_and_missing_calibration_fail_before_work(tmp_path, images):
    from runtimes.tflite.artifact import export_tflite_artifact
    kw = dict(input_shape=(1, 1, 28, 28), preprocess=PRE, labels=["a"] * 10, parity_inputs=images[:2])
    with pytest.raises(ExportError, match="supports --precision"):
        export_tflite_artifact(_tiny_cnn(), tmp_path / "a", precision="w4a4", **kw)
    with pytest.raises(ExportError, match="calibration"):
        export_tflite_artifact(_tiny_cnn(), tmp_path / "b", precision="w8a8", **kw)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_failed_parity_leaves_nothing(tmp_path, images, monkeypatch):
    from runtimes.tflite import artifact as ta
    monkeypatch.setitem(ta.THRESHOLDS, "fp32", {"max_abs": 0.0, "top1_agreement": 1.0, "sqnr_db": 1e9})
    with pytest.raises(ParityError, match="export refused"):
        ta.export_tflite_artifact(_tiny_cnn(), tmp_path / "x", input_shape=(1, 1, 28, 28), preprocess=PRE,
                                  labels=["a"] * 10, parity_inputs=images[:2])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module", ["litert_torch", "ai_edge_litert"])
def test_missing_extra_names_the_install(module, monkeypatch, tmp_path):
    from runtimes.tflite.convert import convert_fp32
    from runtimes.tflite.interpreter import make_interpreter
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    with pytest.raises(TfliteUnavailable, match=r"pip install 'edgevit\[tflite\]'"):
        if module == "litert_torch":
            convert_fp32(_tiny_cnn(), (1, 1, 28, 28), tmp_path / "m.tflite")
        else:
            make_interpreter(tmp_path / "m.tflite")


def test_missing_extra_is_exit_2_in_the_cli(monkeypatch, tiny_artifacts, cli_runner):
    """`edgevit run` on a TFLite artifact without ai-edge-litert: one line, exit 2, naming the extra."""
    from edgevit.cli import cli
    from runtimes import runner as rt
    monkeypatch.setitem(rt.RUNNERS, "tflite", "runtimes.tflite.runner:TfliteRunner")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    from PIL import Image
    img = tiny_artifacts[1].root.parent / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    res = cli_runner.invoke(cli, ["run", str(tiny_artifacts[1].root), str(img)])
    assert res.exit_code == 2 and "edgevit[tflite]" in res.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet-mini", "vit-tiny"])
def test_bundled_model_fp32_and_int8(name, tmp_path):
    """Bundled checkpoints on real Fashion-MNIST: FP32 max abs ≤ 1e-4, all-int8 w8a8 with top-1 close to FP32."""
    from edgevit.data import calibration_tensor, load_data
    from edgevit.models.registry import load_model
    from runtimes.tflite.artifact import export_tflite_artifact
    model, meta = load_model(name)
    x, y = load_data("fashion-mnist:200", meta.preprocess, "test", 0)
    cal = calibration_tensor("fashion-mnist:64", meta.preprocess, 0).numpy()
    common = dict(input_shape=meta.input_shape, preprocess=meta.preprocess.to_dict(), labels=list(meta.labels),
                  parity_inputs=x.numpy(), parity_labels=y.numpy(), model_info={"name": name})
    fp32 = export_tflite_artifact(model, tmp_path / "fp32", **common)
    int8 = export_tflite_artifact(model, tmp_path / "w8a8", precision="w8a8", calibration=cal, **common)
    assert fp32.manifest["parity"]["metrics"]["max_abs"] <= 1e-4
    assert int8.manifest["metrics"]["integer_ops"]["float_ops"] == 0
    m = int8.manifest["metrics"]
    assert abs(m["top1_runtime"] - m["top1_torch"]) <= 3.0  # 200 images; the 0.5-pt bar: benchmarks/tflite_speed.py


def _grid_model(factor: float):
    """Conv/Linear weights already on a per-channel int8 grid (what a dequantised AdaRound result is);
    factor > 1 gives scales wider than max|w|/127, so re-deriving them by min/max would change them."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 64, 3, stride=2), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    grids = []
    with torch.no_grad():
        for mod in m:
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                s = mod.weight.abs().flatten(1).amax(1) / 127 * factor
                q = torch.round(mod.weight / s.view(-1, *[1] * (mod.weight.dim() - 1)))
                mod.weight.copy_(q * s.view(-1, *[1] * (mod.weight.dim() - 1)))
                grids.append((q.flatten(1).numpy(), s.numpy()))
    return m, grids


def _int8_weights(path):
    from runtimes.tflite.interpreter import make_interpreter
    it = make_interpreter(path, delegates=False)
    out = []
    for d in it.get_tensor_details():
        sc = d["quantization_parameters"]["scales"]
        if d["dtype"] == np.int8 and sc.size > 1 and len(d["shape"]) >= 2:
            out.append((it.get_tensor(d["index"]).reshape(len(sc), -1), sc))
    return out


@pytest.mark.parametrize("weight_scales,kept", [("model", True), ("minmax", False)])
def test_model_weight_scales_are_kept(weight_scales, kept, tmp_path, images):
    """weight_scales='model': the int8 FC/Conv weights are edgevit's integers and scales, not re-rounded."""
    from runtimes.tflite.convert import convert_fp32, quantize_static
    model, grids = _grid_model(1.25)
    f = convert_fp32(model, (1, 1, 28, 28), tmp_path / "f.tflite")
    q = quantize_static(f, images[:8], tmp_path / "q.tflite", "w8a8", weight_scales)
    found = _int8_weights(q)
    assert len(found) == len(grids)
    for ints, scale in grids[1:]:  # grids[0] (1 input channel) lowers to DEPTHWISE_CONV_2D: min/max there
        match = [(w, s) for w, s in found if s.shape == scale.shape and np.allclose(s, scale, rtol=1e-5)]
        assert bool(match) == kept
        if kept:  # same integers up to the TFLite OHWI layout: compare sorted rows
            assert np.array_equal(np.sort(match[0][0], 1), np.sort(ints.astype(np.int8), 1))


def test_layernorm_lowering_is_exact_and_leaves_the_model_alone():
    from runtimes.tflite.lower import MulLayerNorm, lower_for_tflite
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16, eps=1e-6), nn.GELU(),
                          nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 4))).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1, 1)
    lowered, lowering = lower_for_tflite(model)
    assert lowering == {"layernorm→mean/mul/rsqrt": 2}
    assert isinstance(lowered[1], MulLayerNorm) and isinstance(lowered[3][0], MulLayerNorm)
    assert isinstance(model[1], nn.LayerNorm)            # the caller's model is not touched
    x = torch.randn(5, 3, 8) * 4
    with torch.no_grad():
        assert torch.allclose(lowered(x), model(x), atol=1e-5)
    assert lower_for_tflite(_tiny_cnn())[1] == {}


def test_delegation_report_of_tiny_cnn(tiny_artifacts):
    """FP32: XNNPACK takes every op in one partition; the report counts ops, not DELEGATE nodes."""
    from runtimes.tflite.delegation import delegation_report
    from runtimes.tflite.inspect import integer_report
    _, fp32, int8 = tiny_artifacts
    rep = delegation_report(fp32.entry)
    assert rep["partitions"] == 1 and rep["builtin_ops"] == {}
    assert rep["delegated_ops"] == integer_report(fp32.entry)["ops"]
    rep8 = delegation_report(int8.entry)
    assert rep8["delegated_ops"] + sum(rep8["builtin_ops"].values()) == integer_report(int8.entry)["ops"]


def test_int8_layernorm_stays_in_xnnpack(tmp_path, images):
    """The lowered LayerNorm has no SQUARED_DIFFERENCE/SUB left to LiteRT's builtin int8 kernels."""
    from runtimes.tflite.convert import convert_fp32, quantize_static
    from runtimes.tflite.delegation import delegation_report
    from runtimes.tflite.inspect import check_integer
    from runtimes.tflite.lower import lower_for_tflite

    class Tok(nn.Module):  # (B, 1, 28, 28) → 28 tokens of width 28 → LayerNorm → Linear → logits
        def __init__(self):
            super().__init__()
            self.norm, self.fc = nn.LayerNorm(28, eps=1e-6), nn.Linear(28, 10)

        def forward(self, x):
            return self.fc(self.norm(x[:, 0])).mean(1)

    torch.manual_seed(0)
    lowered, _ = lower_for_tflite(Tok().eval())
    f = convert_fp32(lowered, (1, 1, 28, 28), tmp_path / "f.tflite")
    q = quantize_static(f, images[16:], tmp_path / "q.tflite", "w8a8")
    check_integer(q)
    builtin = delegation_report(q)["builtin_ops"]
    assert "SQUARED_DIFFERENCE" not in builtin and "SUB" not in builtin


class _ChannelsFirstLayerNorm(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm subclass that normalises NCHW over C by permuting around it."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_layernorm_subclasses_keep_their_own_forward(tmp_path):
    from runtimes.artifact import Artifact
    from runtimes.tflite.convert import convert_fp32
    from runtimes.tflite.lower import lower_for_tflite
    from runtimes.tflite.runner import TfliteRunner
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _ChannelsFirstLayerNorm(8), nn.Flatten()).eval()
    lowered, report = lower_for_tflite(model)
    assert isinstance(lowered[1], _ChannelsFirstLayerNorm) and report == {}
    x = torch.randn(1, 3, 6, 6)
    convert_fp32(lowered, tuple(x.shape), tmp_path / "m.tflite")
    got = TfliteRunner(Artifact(tmp_path, {"entry": "m.tflite"})).run(x.numpy())
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() <= 1e-4
