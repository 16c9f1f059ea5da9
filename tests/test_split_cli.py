"""`edgevit split` / `serve-split`: bad input is one line and exit 2 before any work; resumable distillation."""
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from edgevit.cli import cli
from edgevit.models.bundled import BUNDLED
from edgevit.split.distill import DistillRecipe, distill_submodel
from edgevit.split.prune import subset_head
from edgevit.split.subvit import SubViT


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "vit-tiny-random.safetensors"
    save_file(BUNDLED["vit-tiny"]["factory"]().state_dict(), str(path))
    return str(path)


def run(args):
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("extra,needle", [
    (["--devices", "0"], "at least 1"),
    (["--devices", "11"], "only 10 classes"),
    (["--devices", "nope.yaml"], "neither a device count"),
    (["--devices", "4", "--keep", "1.5"], "--keep"),
    (["--devices", "4", "--keep", "0.001"], "cannot hold a sub-model"),
    (["--devices", "4", "--data", "mnist"], "unknown data spec"),
    (["--devices", "4", "--latency", "0"], "--latency"),
    (["--devices", "4", "--latency", "0.001"], "cannot meet --latency"),
    (["--devices", "4", "--bits", "w9a3"], "--bits w9a3"),
    (["--devices", "4", "--quantize-fusion"], "needs --bits"),
])
def test_split_usage_errors(tmp_path, random_weights, extra, needle):
    out = tmp_path / "out"
    r = run(["split", "vit-tiny", "--weights", random_weights, "--out", str(out), *extra])
    assert r.exit_code == 2, r.output
    assert needle in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_split_refuses_existing_output(tmp_path, random_weights):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    r = run(["split", "vit-tiny", "--weights", random_weights, "--devices", "2", "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "already exists" in r.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_split_rejects_a_cnn(tmp_path):
    path = tmp_path / "cnn.safetensors"
    save_file(BUNDLED["mobilenet-mini"]["factory"]().state_dict(), str(path))
    r = run(["split", "mobilenet-mini", "--weights", str(path), "--devices", "2", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "ViT" in r.output


def test_serve_split_errors(tmp_path):
    r = run(["serve-split", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "not an artifact directory" in r.output
    r = run(["serve-split", str(tmp_path), "--address", "auto"])
    assert r.exit_code == 2 and "--address only applies" in r.output


def test_help_shows_examples():
    for cmd in ("split", "serve-split"):
        r = run([cmd, "--help"])
        assert r.exit_code == 0 and f"edgevit {cmd}" in r.output


def test_distillation_resumes_to_the_same_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    vit = BUNDLED["vit-tiny"]["factory"]().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28, generator=g), torch.arange(32) % 10
    teacher = (torch.randn(32, 10, generator=g), torch.randn(32, 10, generator=g))
    recipe = DistillRecipe(epochs=2, batch_size=8, bf16=False)
    keep, hidden = [torch.tensor([0])] * 12, [torch.arange(8)] * 12
    hw, hb = subset_head(vit, torch.tensor([1, 2]))
    straight = SubViT.from_vit(vit, keep_heads=keep, keep_hidden=hidden, head_weight=hw, head_bias=hb)
    distill_submodel(straight, [1, 2], x, y, teacher, recipe, progress=False)

    ckpt = tmp_path / "sub.pt"
    resumed = SubViT.from_vit(vit, keep_heads=keep, keep_hidden=hidden, head_weight=hw, head_bias=hb)
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def flaky_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:                 # second epoch (4 steps each), second batch: simulate Ctrl-C
            raise KeyboardInterrupt
        return real_step(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        distill_submodel(resumed, [1, 2], x, y, teacher, recipe, ckpt, progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert ckpt.exists()
    resumed = SubViT.from_vit(vit, keep_heads=keep, keep_hidden=hidden, head_weight=hw, head_bias=hb)
    history = distill_submodel(resumed, [1, 2], x, y, teacher, recipe, ckpt, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_split_then_serve_end_to_end(tmp_path, random_weights):
    out = tmp_path / "art"
    r = run(["split", "vit-tiny", "--weights", random_weights, "--devices", "2", "--out", str(out),
             "--train-images", "64", "--fusion-images", "32", "--epochs", "1", "--eval-data", "fashion-mnist:32",
             "--latency-rounds", "5", "--work-dir", str(tmp_path / "work")])
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").is_file() and (out / "device0" / "submodel.onnx").is_file()
    assert "parallel latency" in r.output
    preds = tmp_path / "p.json"
    r = run(["serve-split", str(out), "--data", "fashion-mnist:32", "--predictions", str(preds)])
    assert r.exit_code == 0 and "top-1" in r.output, r.output
    assert len(__import__("json").loads(preds.read_text())["top1"]) == 32
