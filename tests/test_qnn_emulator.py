"""End to end on the QNN HTP emulator: bundle the bundled ViT (after the qnn-htp rewrite) and CNN,
compile context binaries for two Snapdragon generations, run them, check placement and parity."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

pytest.importorskip("onnxruntime_qnn")
pytestmark = pytest.mark.slow

N_IMAGES = 8


def _export(tmp_path, name, precision, socs):
    import torch
    from edgevit.data import load_data, parse_data_spec
    from edgevit.models.registry import load_model
    from edgevit.rewrite import load_target, rewrite_model
    from runtimes.qnn.artifact import export_qnn_artifact
    torch.set_num_threads(1)
    model, meta = load_model(name)
    x, y = load_data(parse_data_spec("fashion-mnist:64"), meta.preprocess, split="test", seed=0)
    cal = load_data(parse_data_spec("fashion-mnist:32"), meta.preprocess, split="train", seed=0)[0].numpy()
    npu, _ = rewrite_model(model, load_target("qnn-htp"), x[:16], (1, *meta.input_shape[1:]))
    art = export_qnn_artifact(npu, tmp_path / f"{name}-qnn", input_shape=meta.input_shape,
                              preprocess=meta.preprocess.to_dict(), labels=list(meta.labels),
                              parity_inputs=x.numpy(), parity_labels=y.numpy(), calibration=cal,
                              precision=precision, socs=socs, parity_images=N_IMAGES)
    return art, x.numpy()


def test_vit_bundle_two_socs_runs_on_htp(tmp_path):
    from runtimes.artifact import load_artifact
    from runtimes.qnn.runner import QnnRunner
    art, x = _export(tmp_path, "vit-tiny", "w8a16", ("SM8650", "SM8550"))
    m = art.manifest
    assert m["runtime"] == "qnn" and m["entry"] == "model.qdq.onnx" and m["input"]["shape"] == [1, 1, 28, 28]
    place = m["metrics"]["placement"]
    assert place["refused"] == 0 and place["finalized"] and place["nodes_on_htp"] > 0   # 100 % on HTP
    assert m["quant"]["carried"]["weight_codes_exact"] and m["quant"]["carried"]["weights_from_edgevit"] == 50
    assert m["parity"]["metrics"]["top1_agreement"] >= 0.99 and m["parity"]["metrics"]["n"] == N_IMAGES
    ctx = {c["soc"]: c for c in m["qnn"]["contexts"]}
    assert (ctx["SM8650"]["htp_arch"], ctx["SM8550"]["htp_arch"]) == (75, 73)
    digests = {hashlib.sha256((art.root / c["path"]).read_bytes()).hexdigest() for c in ctx.values()}
    assert len(digests) == 2                              # one binary per HTP generation
    for c in ctx.values():
        assert c["check_vs_qdq"]["top1_agreement"] == 1.0
    art = load_artifact(art.root)                         # hashes verify
    out = QnnRunner(art, soc="SM8650").run(x[:2])          # the precompiled binary itself
    assert out.shape == (2, 10) and np.isfinite(out).all()


def test_cnn_w8a8_places_every_node(tmp_path):
    art, _ = _export(tmp_path, "mobilenet-mini", "w8a8", ("SM8650",))
    m = art.manifest
    assert m["metrics"]["placement"]["refused"] == 0 and m["metrics"]["placement"]["finalized"]
    assert m["quant"]["precision"] == "w8a8" and m["parity"]["metrics"]["top1_agreement"] >= 0.99
    enc = (art.root / "model.encodings").read_text()
    assert '"bw": 8' in enc and '"bw": 16' not in enc


class _Job:
    job_id, url = "j1", "https://example.invalid/j1"

    def wait(self, timeout=None):
        return type("S", (), {"success": True, "code": "SUCCESS", "message": None})()

    def get_target_model(self):
        return "target"


class _Client:
    def __init__(self):
        self.calls = []

    def get_devices(self, name=""):
        return [object()]

    def upload_model(self, path):
        self.calls.append(("upload", path))
        return "model"

    def submit_compile_job(self, model, device, input_specs, options, name):
        self.calls.append(("compile", input_specs, options))
        return _Job()


def test_bundle_fits_the_hub_compile_job(tmp_path, monkeypatch, cli_runner):
    """The hub uploads the QDQ entry with static float input specs; without a token: exit 2, bundle kept."""
    pytest.importorskip("qai_hub")
    from edgevit.cli import cli
    from runtimes.hub import HubJobs
    art, _ = _export(tmp_path, "mobilenet-mini", "w8a16", ("SM8650",))
    client = _Client()
    HubJobs(client, art, "Samsung Galaxy S24").compile()
    (_, uploaded), (_, specs, options) = client.calls
    assert uploaded.endswith("model.qdq.onnx") and specs == {"input": ((1, 1, 28, 28), "float32")}
    assert "--target_runtime qnn_context_binary" in options
    monkeypatch.delenv("QAI_HUB_API_TOKEN", raising=False)
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "absent.ini"))
    res = cli_runner.invoke(cli, ["hub", "compile", str(art.root), "--device", "Samsung Galaxy S24"])
    assert res.exit_code == 2 and "qai-hub configure" in res.output and (art.root / "model.qdq.onnx").exists()
