"""Split artifacts run the same on torch, the local executor and a real local Ray cluster; failures are
named, never hangs. Uses a randomly initialised vit-tiny and tiny budgets (numbers live in benchmarks/)."""
import json
import shutil

import numpy as np
import pytest
import torch

from edgevit.data import load_data
from edgevit.errors import UsageError
from edgevit.models.bundled import BUNDLED, FASHION_MNIST_PREPROCESS, LABELS
from edgevit.models.registry import ModelMeta
from edgevit.split import (DeviceError, DistillRecipe, LocalExecutor, SplitOptions, build_split, load_split,
                           parse_devices, write_split_artifact)

N_DEV = 4


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    vit = BUNDLED["vit-tiny"]["factory"]().eval()
    meta = ModelMeta("vit-tiny", FASHION_MNIST_PREPROCESS, LABELS, "bundled")
    x, y = load_data("fashion-mnist:240", meta.preprocess, split="train")
    xt, yt = load_data("fashion-mnist:64", meta.preprocess, split="test")
    opts = SplitOptions(keep=0.3, train_images=160, fusion_images=80, score_images=32, fusion_epochs=3,
                        distill=DistillRecipe(epochs=1, batch_size=64))
    split, plan = build_split(vit, x, y, parse_devices(str(N_DEV)), opts, progress=False)
    out = tmp_path_factory.mktemp("split") / "art"
    manifest, report = write_split_artifact(out, split, plan, vit, meta, xt, yt, rounds=5)
    return dict(vit=vit, split=split, plan=plan, out=out, manifest=manifest, report=report, x=xt[:24], meta=meta,
                xt=xt, yt=yt)


def torch_logits(built):
    with torch.no_grad():
        return built["split"](built["x"]).numpy()


def test_artifact_layout_and_manifest(built):
    out, m = built["out"], built["manifest"]
    devs = m["split"]["devices"]
    assert len(devs) == N_DEV
    assert sorted(c for d in devs for c in d["classes"]) == list(range(10))
    for d in devs:
        assert (out / d["dir"] / "submodel.onnx").is_file()
        assert d["ray_resource"] == f"edgevit-device-{d['name']}" and len(d["sha256"]) == 64
        assert d["params"] <= d["budget_params"] and d["expected_latency_ms"] > 0
    assert (out / "fusion" / "fusion.onnx").is_file() and (out / "split_report.json").is_file()
    listed = {f["path"] for f in m["files"]}
    assert {"fusion/fusion.onnx", "split_report.json", *(d["model"] for d in devs)} <= listed


def test_report_has_measured_numbers(built):
    r = json.loads((built["out"] / "split_report.json").read_text())
    assert len(r["devices"]) == N_DEV
    orig = r["original"]["params"]
    assert all(d["params"] < orig and d["macs"] < r["original"]["macs"] for d in r["devices"])
    assert r["size"]["largest_device_fraction"] <= 0.3
    assert r["latency"]["parallel_ms"]["1"] > 0 and r["latency"]["original_ms"]["1"] > 0
    assert 0 <= r["accuracy"]["split_top1"] <= 100


def test_reloaded_torch_split_is_the_same_model(built):
    again = load_split(built["out"] / "torch")
    with torch.no_grad():
        np.testing.assert_array_equal(again(built["x"]).numpy(), torch_logits(built))


def test_local_executor_matches_torch(built):
    ref = torch_logits(built)
    with LocalExecutor(built["out"]) as ex:
        p = ex.predict(built["x"].numpy())
    assert not p.degraded and set(p.device_ms) == {d["name"] for d in built["plan"]["devices"]}
    assert (p.top1 == ref.argmax(-1)).all()
    assert np.abs(p.logits - ref).max() <= 1e-4


def test_local_executor_names_a_failing_device_and_degrades(built, tmp_path):
    ex = LocalExecutor(built["out"])
    victim = built["plan"]["devices"][2]["name"]

    class Broken:
        def run(self, *a, **k):
            raise RuntimeError("device unplugged")
    ex.sessions[victim] = Broken()
    with pytest.raises(DeviceError, match=victim):
        ex.predict(built["x"].numpy())
    ex.degrade = True
    p = ex.predict(built["x"].numpy())
    assert p.degraded and p.missing == [victim] and p.logits.shape == (24, 10)
    ex.close()


def test_local_executor_times_out_instead_of_hanging(built):
    import time
    ex = LocalExecutor(built["out"], timeout_s=0.5)
    victim = built["plan"]["devices"][0]["name"]

    class Stuck:
        def run(self, *a, **k):
            time.sleep(3)
    ex.sessions[victim] = Stuck()
    t0 = time.perf_counter()
    with pytest.raises(DeviceError, match=f"{victim} did not answer within 0.5 s"):
        ex.predict(built["x"].numpy())
    assert time.perf_counter() - t0 < 2.5
    ex.close()


def test_tampered_artifact_is_refused(built, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(built["out"], copy)
    dev = built["manifest"]["split"]["devices"][0]["model"]
    with open(copy / dev, "ab") as f:
        f.write(b"\0")
    with pytest.raises(UsageError, match="sha256"):
        LocalExecutor(copy)


def test_wrong_input_shape_is_a_usage_error(built):
    with LocalExecutor(built["out"]) as ex, pytest.raises(UsageError, match="shape"):
        ex.predict(np.zeros((2, 3, 28, 28), np.float32))


@pytest.fixture(scope="module")
def ray_cluster(built):
    ray = pytest.importorskip("ray")
    resources = {d["ray_resource"]: 1 for d in built["manifest"]["split"]["devices"]}
    ray.init(num_cpus=2, resources=resources, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_executor_matches_torch_and_names_a_killed_device(built, ray_cluster):
    from edgevit.split.ray_executor import RayExecutor
    ref = torch_logits(built)
    ex = RayExecutor(built["out"], timeout_s=60, start_timeout_s=120)
    try:
        assert len(ex.actors) == N_DEV
        p = ex.predict(built["x"].numpy())
        assert not p.degraded and (p.top1 == ref.argmax(-1)).all()
        assert np.abs(p.logits - ref).max() <= 1e-4
        victim = built["plan"]["devices"][1]["name"]
        ray_cluster.kill(ex.actors[victim])
        with pytest.raises(DeviceError, match=victim):
            ex.predict(built["x"].numpy())
        ex.degrade = True
        p = ex.predict(built["x"].numpy())
        assert p.degraded and p.missing == [victim]
    finally:
        ex.close()


@pytest.fixture(scope="module")
def quantized(built, tmp_path_factory):
    from edgevit.split.quantize import SplitQuant, quantize_split
    x, y = load_data("fashion-mnist:240", built["meta"].preprocess, split="train")
    qsplit = quantize_split(built["split"], SplitQuant("w8a8", "int", fusion=True, calib_images=64), x, y, x[:64])
    out = tmp_path_factory.mktemp("qsplit") / "art"
    manifest, report = write_split_artifact(out, qsplit, built["plan"], built["vit"], built["meta"],
                                            built["xt"], built["yt"], rounds=5)
    return dict(split=qsplit, out=out, manifest=manifest, report=report)


def test_quantized_split_writes_low_bit_graphs_and_records_the_spec(built, quantized):
    import onnx
    m = quantized["manifest"]
    assert m["quant"]["precision"] == "w8a8" and m["quant"]["fmt"] == "int" and m["quant"]["fusion"]
    for d in m["split"]["devices"]:
        assert d["quant"]["precision"] == "w8a8"
        g = onnx.load(str(quantized["out"] / d["model"])).graph
        assert any(i.data_type == onnx.TensorProto.INT8 for i in g.initializer)
        assert any(n.op_type == "DequantizeLinear" for n in g.node)
    assert m["split"]["fusion"]["quant"]["precision"] == "w8a8"
    assert m["parity"]["metrics"]["top1_agreement"] >= 0.995 and m["parity"]["precision"] == "w8a8"
    fp = sum((built["out"] / d["model"]).stat().st_size for d in built["manifest"]["split"]["devices"])
    q = sum((quantized["out"] / d["model"]).stat().st_size for d in m["split"]["devices"])
    assert q < 0.5 * fp


def test_quantized_local_executor_matches_torch_fake_quant(built, quantized):
    with torch.no_grad():
        ref = quantized["split"](built["x"]).numpy()
    with LocalExecutor(quantized["out"]) as ex:
        p = ex.predict(built["x"].numpy())
    assert (p.top1 == ref.argmax(-1)).mean() >= 0.95
    assert np.abs(p.logits - ref).max() <= 0.05 * np.abs(ref).max()


def test_quantized_split_reloads_exactly(built, quantized):
    again = load_split(quantized["out"] / "torch")
    with torch.no_grad():
        np.testing.assert_array_equal(again(built["x"]).numpy(), quantized["split"](built["x"]).numpy())
