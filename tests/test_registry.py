import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgevit.errors import UsageError
from edgevit.models import bundled
from edgevit.models.registry import ModelMeta, list_models, load_model

FACTORY_SRC = """
import torch.nn as nn
def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
"""


@pytest.fixture
def user_factory(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(FACTORY_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_models:build"


def test_list_models_names_every_bundled_model():
    names = [r["name"] for r in list_models()]
    assert set(bundled.BUNDLED) <= set(names)


@pytest.mark.parametrize("name", list(bundled.BUNDLED))
def test_bundled_models_build_with_their_meta(name):
    if not bundled.checkpoint_path(name).exists():
        pytest.skip("checkpoint not trained yet")
    model, meta = load_model(name)
    assert meta.source == "bundled" and len(meta.labels) == 10 and meta.input_shape == (1, 1, 28, 28)
    assert model(torch.zeros(meta.input_shape)).shape == (1, 10)
    assert not model.training


def test_meta_round_trip_and_stage_history():
    meta = ModelMeta("m", bundled.FASHION_MNIST_PREPROCESS, ("a", "b"), "user")
    later = meta.with_stage("quantize", bits="w4a8")
    assert meta.history == [] and later.history == [{"stage": "quantize", "bits": "w4a8"}]
    assert ModelMeta.from_dict(later.to_dict()) == later


def test_unknown_model_names_the_alternatives():
    with pytest.raises(UsageError, match="edgevit models"):
        load_model("resnet9000")


def test_user_factory_with_pt_and_safetensors_weights(tmp_path, user_factory):
    ref = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.randn(2, 12)
    for path in ("w.pt", "w.safetensors"):
        model, meta = load_model(user_factory, weights=str(tmp_path / path))
        assert torch.equal(model(x), ref(x)) and meta.source == "user" and len(meta.labels) == 5


def test_corrupt_and_mismatched_checkpoints(tmp_path, user_factory):
    (tmp_path / "bad.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(UsageError, match="not a readable checkpoint"):
        load_model(user_factory, weights=str(tmp_path / "bad.pt"))
    torch.save(nn.Linear(3, 5).state_dict(), tmp_path / "other.pt")
    with pytest.raises(UsageError, match="does not match"):
        load_model(user_factory, weights=str(tmp_path / "other.pt"))
    torch.save({"1.weight": torch.zeros(5, 7), "1.bias": torch.zeros(5)}, tmp_path / "shape.pt")
    with pytest.raises(UsageError, match="shape mismatch"):
        load_model(user_factory, weights=str(tmp_path / "shape.pt"))
    with pytest.raises(UsageError, match="does not exist"):
        load_model(user_factory, weights=str(tmp_path / "missing.pt"))


def test_pickled_module_needs_explicit_trust(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(nn.Sequential(nn.Linear(4, 3)), path)
    with pytest.raises(UsageError, match="--trust-checkpoint"):
        load_model(str(path))
    model, meta = load_model(str(path), trust_checkpoint=True)
    assert isinstance(model, nn.Module) and len(meta.labels) == 3


def test_pickled_objects_in_weights_are_refused(tmp_path, user_factory):
    torch.save({"weights": nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    with pytest.raises(UsageError, match="trust-checkpoint"):
        load_model(user_factory, weights=str(tmp_path / "pickled.pt"))
