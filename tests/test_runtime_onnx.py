"""ONNX runtime: FP32 and quantised export → run → parity on bundled architectures (random weights where
no checkpoint is committed yet), packed-weight sizes, CLI errors."""
import numpy as np
import pytest
import torch

from edgevit.data import load_data
from edgevit.models.bundled import BUNDLED, FASHION_MNIST_PREPROCESS as PRE, LABELS
from runtimes.artifact import load_artifact
from runtimes.errors import ExportError, ParityError
from runtimes.onnx.artifact import export_onnx_artifact
from runtimes.onnx.quantspec import ActQuant, LayerQuant, QuantSpec
from runtimes.runner import open_runner

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def images():
    x, y = load_data("fashion-mnist:64", PRE, "test", seed=0)
    return x.numpy(), y.numpy()


def _model(name):
    torch.manual_seed(0)
    return BUNDLED[name]["factory"]().eval()


def _export(model, out, images, spec=None, **kw):
    x, y = images
    return export_onnx_artifact(model, out, input_shape=(1, 1, 28, 28), preprocess=PRE.to_dict(), labels=list(LABELS),
                                parity_inputs=x, parity_labels=y, model_info={"name": "t"}, quant_spec=spec, **kw)


def _spec(model, fmt, group=0, act=None):
    """Round-to-nearest quantisation of every Linear (and non-depthwise conv) with absmax scales."""
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
            s = amax / qmax
            q = np.clip(np.round(wg / s[..., None]), -qmax - 1, qmax)
        else:
            dt = {"fp4_e2m1": ml_dtypes.float4_e2m1fn, "fp6_e3m2": ml_dtypes.float6_e3m2fn,
                  "fp8_e5m2": ml_dtypes.float8_e5m2}[fmt]
            s = amax / float(ml_dtypes.finfo(dt).max)
            q = (wg / s[..., None]).astype(dt).astype(np.float32)
        layers[n] = LayerQuant(fmt, q.reshape(m.weight.shape), s, act=act)
    return QuantSpec(f"w{fmt[-1] if fmt.startswith('int') else fmt[2]}a{act.bits if act else 32}", layers)


class _FakeQuant(torch.nn.Module):
    """Torch reference for a spec: dequantised weights plus ActQuant's rounding as pre-hooks."""

    def __init__(self, model, spec):
        super().__init__()
        from runtimes.onnx.quantized import float_twin
        self.m = float_twin(model, spec)
        for n, lq in spec.layers.items():
            if lq.act is not None:
                self.m.get_submodule(n).register_forward_pre_hook(self._hook(lq.act))
        self.spec = QuantSpec(spec.precision, {f"m.{k}": v for k, v in spec.layers.items()})

    @staticmethod
    def _hook(a):
        def hook(mod, inp):
            x, axis, qmax = inp[0], 1 if isinstance(mod, torch.nn.Conv2d) else -1, 2 ** (a.bits - 1) - 1
            s = x.abs().amax(axis, keepdim=True).clamp_min(1e-8) / qmax
            return (torch.clamp(torch.round(x / s), -qmax, qmax) * s,)
        return hook

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


@pytest.mark.parametrize("fmt,group,bits_ratio", [("int4", 0, 0.16), ("fp4_e2m1", 0, 0.17), ("int2", 0, 0.12),
                                                  ("fp6_e3m2", 0, 0.25), ("fp8_e5m2", 0, 0.30), ("int4", 32, 0.19)])
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


def test_int8_per_token_dynamic_activations_use_integer_matmul(tmp_path, images):
    model = _model("vit-tiny")
    fq = _FakeQuant(model, _spec(model, "int8", act=ActQuant("int8", "per-token")))
    art = _export(fq, tmp_path / "q", images, fq.spec)
    import onnx
    ops = {n.op_type for n in onnx.load(str(art.entry)).graph.node}
    assert {"MatMulInteger", "ReduceMax", "Round"} <= ops
    assert art.manifest["parity"]["metrics"]["top1_agreement"] >= 0.995
    assert art.manifest["quant"]["precision"] == "w8a8"


def test_cnn_int8_with_batchnorm_folded(tmp_path, images):
    model = _model("mobilenet-mini")
    with torch.no_grad():  # non-trivial BN statistics so folding is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.1)
                m.weight.uniform_(0.5, 1.5)
    fq = _FakeQuant(model, _spec(model, "int8", act=ActQuant("int8", "per-token")))
    art = _export(fq, tmp_path / "q", images, fq.spec)
    assert art.manifest["parity"]["metrics"]["sqnr_db"] == "inf" or art.manifest["parity"]["metrics"]["sqnr_db"] > 40


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
    r = cli_runner.invoke(cli, ["export", "vit-tiny", "--runtime", "tflite", "--out", str(tmp_path / "t")])
    assert r.exit_code == 2 and not (tmp_path / "t").exists()
