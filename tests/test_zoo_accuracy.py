"""Every bundled checkpoint loads and reproduces its recorded accuracy on a fixed test subset."""
import json

import pytest
import torch

from edgevit.data.fashion_mnist import load_fashion_mnist
from edgevit.models import bundled
from edgevit.models.registry import load_model
from edgevit.models.train import evaluate

MIN_TOP1 = {"vit-tiny": 86.0, "vit-small": 86.0, "vit-base": 89.0, "mobilenet-mini": 90.0}


def record(name):
    return json.loads(bundled.record_path(name).read_text())


@pytest.mark.parametrize("name", list(bundled.BUNDLED))
def test_checkpoint_reproduces_recorded_subset_accuracy(name):
    rec = record(name)
    model, meta = load_model(name)
    images, labels = load_fashion_mnist("test")
    n = rec["check_subset"]["first_n"]
    acc = evaluate(model, meta.preprocess(images[:n]), torch.as_tensor(labels[:n]))
    assert abs(acc - rec["check_subset"]["top1"]) <= 0.1, (acc, rec["check_subset"])
    assert rec["test_top1"] >= MIN_TOP1[name]


def test_family_is_ordered_by_size():
    acc = {n: record(n)["test_top1"] for n in bundled.VIT_WIDTHS}
    assert acc["vit-base"] > acc["vit-small"] > acc["vit-tiny"]
    assert sum(json.loads(bundled.record_path(n).read_text())["params"] for n in bundled.BUNDLED) * 4 <= 25e6
