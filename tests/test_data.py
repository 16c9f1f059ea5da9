import gzip

import numpy as np
import pytest
import torch

from edgevit.data import calibration_tensor, load_data, parse_data_spec
from edgevit.data.fashion_mnist import load_fashion_mnist
from edgevit.data.image_folder import load_image_folder
from edgevit.data.preprocess import Preprocess
from edgevit.errors import UsageError

FMNIST = Preprocess(size=28, channels=1, mean=(0.2860,), std=(0.3530,))


def test_reads_debian_files(fmnist_test):
    images, labels = fmnist_test
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    train_images, train_labels = load_fashion_mnist("train")
    assert train_images.shape == (60000, 28, 28) and len(train_labels) == 60000


def test_missing_files_name_the_apt_package(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVIT_FASHION_MNIST", str(tmp_path))
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test")


def test_corrupt_idx_file_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVIT_FASHION_MNIST", str(tmp_path))
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(b"\x00\x00\x08\x03" + (100).to_bytes(4, "big") * 3 + b"\x00" * 10)
    with pytest.raises(UsageError, match="truncated"):
        load_fashion_mnist("test")


def test_preprocess_normalises_and_adapts_channels():
    img = np.full((2, 28, 28), 255, dtype=np.uint8)
    x = FMNIST(img)
    assert x.shape == (2, 1, 28, 28)
    assert torch.allclose(x, torch.full_like(x, (1 - 0.2860) / 0.3530))
    rgb224 = Preprocess(224, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(img)
    assert rgb224.shape == (2, 3, 224, 224) and torch.allclose(rgb224, torch.ones_like(rgb224), atol=1e-5)


def test_data_specs():
    assert parse_data_spec("fashion-mnist").limit is None
    assert parse_data_spec("fashion-mnist:512").limit == 512
    spec = parse_data_spec("folder:/some/dir:64")
    assert (spec.kind, spec.path, spec.limit) == ("folder", "/some/dir", 64)
    for bad in ("imagenet", "fashion-mnist:-3", "fashion-mnist:abc", "folder:"):
        with pytest.raises(UsageError):
            parse_data_spec(bad)


def test_mirror_suffix_appends_each_images_mirror():
    spec = parse_data_spec("fashion-mnist:8+mirror")
    assert (spec.kind, spec.limit, spec.mirror) == ("fashion-mnist", 8, True)
    assert parse_data_spec("photos+mirror").mirror and not parse_data_spec("photos").mirror
    plain, y = load_data("fashion-mnist:8", FMNIST, split="train", seed=1)
    both, y2 = load_data(spec, FMNIST, split="train", seed=1)
    assert both.shape == (16, 1, 28, 28) and torch.equal(both[0::2], plain) and torch.equal(both[1::2], plain.flip(-1))
    assert torch.equal(y2[0::2], y) and torch.equal(y2[1::2], y)
    assert calibration_tensor("fashion-mnist:8+mirror", FMNIST, seed=1).shape[0] == 16
    with pytest.raises(UsageError, match=r"\+mirror"):
        parse_data_spec("+mirror")


def test_seeded_subsets_are_deterministic_and_calibration_uses_train_split():
    a, ya = load_data("fashion-mnist:64", FMNIST, seed=3)
    b, yb = load_data("fashion-mnist:64", FMNIST, seed=3)
    c, _ = load_data("fashion-mnist:64", FMNIST, seed=4)
    assert torch.equal(a, b) and torch.equal(ya, yb) and not torch.equal(a, c)
    calib = calibration_tensor("fashion-mnist:64", FMNIST, seed=3)
    assert calib.shape == (64, 1, 28, 28) and not torch.equal(calib, a)


def test_image_folder_labelled_and_flat(tmp_path):
    from PIL import Image
    for cls, value in (("cats", 10), ("dogs", 200)):
        (tmp_path / "lab" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 30, 3), value, np.uint8)).save(tmp_path / "lab" / cls / f"{i}.png")
    images, labels, classes = load_image_folder(tmp_path / "lab", 28, 1)
    assert images.shape == (4, 28, 28, 1) and labels.tolist() == [0, 0, 1, 1] and classes == ["cats", "dogs"]
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat" / "a.jpg")
    x, y = load_data(f"folder:{tmp_path / 'flat'}", FMNIST)
    assert x.shape == (1, 1, 28, 28) and y is None
    (tmp_path / "flat" / "b.png").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="cannot read image"):
        load_image_folder(tmp_path / "flat", 28, 1)


def test_auto_data_follows_the_model():
    """`auto` is Fashion-MNIST for the bundled 1-channel models and the photos for RGB (ImageNet) ones."""
    from edgevit.data import load_data, resolve_data_spec
    from edgevit.data.preprocess import Preprocess
    gray = Preprocess(size=28, channels=1, mean=(0.286,), std=(0.353,))
    rgb = Preprocess(size=32, channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert resolve_data_spec("auto:256", gray) == "fashion-mnist:256"
    assert resolve_data_spec("auto:63+mirror", rgb) == "photos:63+mirror"
    assert resolve_data_spec("folder:/x:4", rgb) == "folder:/x:4"
    x, y = load_data("auto:8", rgb, split="test")
    assert x.shape[1:] == (3, 32, 32) and y is None           # photos: unlabelled, agreement only
    x, y = load_data("auto:8", gray, split="test")
    assert x.shape[1:] == (1, 28, 28) and y is not None and len(y) == 8
    with pytest.raises(UsageError):
        resolve_data_spec("auto:0", gray)


def test_quantize_defaults_calibrate_an_imagenet_model_on_photos(cli_runner, tmp_path):
    import json
    from edgevit.cli import cli
    import importlib.util
    if importlib.util.find_spec("timm") is None:   # (importing timm itself needs edgevit's torchvision stubs)
        pytest.skip("timm not installed")
    r = cli_runner.invoke(cli, ["quantize", "timm:test_vit", "--bits", "w8a8", "--eval-limit", "8",
                                "--out", str(tmp_path / "q")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["calib"].startswith("photos") and report["eval"]["data"] == "photos"
