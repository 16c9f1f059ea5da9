"""Qualcomm AI Hub commands: the no-token / no-package paths, the token never leaking, and the job chain
driven through a fake client (no network here)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgevit.cli import cli

FAKE_TOKEN = "FAKEtoken-7c1e2d9a5b4f"
DEVICE = "Samsung Galaxy S24"


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QAI_HUB_API_TOKEN", raising=False)
    monkeypatch.delenv("QAIHUB_CLIENT_INI", raising=False)


@pytest.fixture
def fake_token(monkeypatch, tmp_path):
    """A token in a temporary HOME's ~/.qai_hub/client.ini, the file `qai-hub configure` writes."""
    home = tmp_path / "home"
    (home / ".qai_hub").mkdir(parents=True)
    (home / ".qai_hub" / "client.ini").write_text(
        f"[api]\napi_token = {FAKE_TOKEN}\napi_url = https://example.invalid\nweb_url = https://example.invalid\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("QAI_HUB_API_TOKEN", raising=False)
    monkeypatch.delenv("QAIHUB_CLIENT_INI", raising=False)
    return home


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    """A real (tiny) ONNX artifact: the hub code reads its manifest and runs it locally."""
    from runtimes.onnx.artifact import export_onnx_artifact
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    out = tmp_path_factory.mktemp("hub") / "tiny-onnx"
    export_onnx_artifact(model, out, input_shape=(1, 1, 28, 28), labels=[str(i) for i in range(10)],
                         preprocess={"size": 28, "channels": 1, "mean": [0.286], "std": [0.353]},
                         parity_inputs=x, model_info={"name": "tiny"}, dynamic_batch=False)
    return out


class _Status:
    def __init__(self, ok=True, message=None):
        self.success, self.message, self.code = ok, message, "SUCCESS" if ok else "FAILED"


class _Job:
    def __init__(self, job_id, outputs=None, ok=True):
        self.job_id, self.url, self._outputs, self._ok = job_id, f"https://example.invalid/jobs/{job_id}", outputs, ok

    def wait(self, timeout=None):
        return _Status(self._ok, None if self._ok else "QNN compiler error")

    def get_target_model(self):
        return "target-model"

    def download_profile(self):
        return {"execution_summary": {"estimated_inference_time": 1234, "estimated_inference_peak_memory": 4096},
                "execution_detail": [{"compute_unit": "NPU"}] * 5 + [{"compute_unit": "CPU"}]}

    def download_output_data(self):
        return self._outputs


class FakeClient:
    """The qai_hub.Client methods edgevit calls; records what it was asked to do."""

    def __init__(self, reply=None, fail_compile=False, leak=False):
        self.calls, self.reply, self.fail_compile, self.leak = [], reply, fail_compile, leak

    def get_devices(self, name=""):
        if self.leak:
            raise ConnectionError(f"401 Unauthorized (Authorization: token {FAKE_TOKEN})")
        return [object()] if name == DEVICE else []

    def upload_model(self, path):
        self.calls.append(("upload", Path(path).name))
        return "model"

    def submit_compile_job(self, model, device, input_specs, options, name):
        self.calls.append(("compile", input_specs, options))
        return _Job("jc1", ok=not self.fail_compile)

    def submit_inference_job(self, model, device, inputs, profile):
        self.calls.append(("inference", None if inputs is None else {k: len(v) for k, v in inputs.items()}, profile))
        return _Job("ji1" if inputs is not None else "jp1", outputs=self.reply)


def _use_client(monkeypatch, client):
    import runtimes.hub as hub
    real = hub.make_client

    def make():
        real()  # still enforces the package and token checks
        return client
    monkeypatch.setattr(hub, "make_client", make)


def _all_text(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


def test_no_token_exits_2_with_how_to_configure(cli_runner, no_token, onnx_artifact):
    for sub in ("compile", "profile", "infer"):
        res = cli_runner.invoke(cli, ["hub", sub, str(onnx_artifact), "--device", DEVICE])
        assert res.exit_code == 2, res.output
        assert "qai-hub configure --api_token" in res.output and "QAI_HUB_API_TOKEN" in res.output
        assert "Traceback" not in res.output


def test_missing_qai_hub_names_the_extra(cli_runner, fake_token, onnx_artifact, monkeypatch):
    monkeypatch.setitem(sys.modules, "qai_hub", None)
    res = cli_runner.invoke(cli, ["hub", "compile", str(onnx_artifact)])
    assert res.exit_code == 2 and "pip install 'edgevit[hub]'" in res.output


def test_token_lookup_never_returns_the_token(fake_token, monkeypatch):
    from runtimes import hub
    src = hub.token_source()
    assert src is not None and "client.ini" in src and FAKE_TOKEN not in src
    assert hub.scrub(f"header token {FAKE_TOKEN}") == "header token ***"
    monkeypatch.setenv("QAI_HUB_API_TOKEN", "ENV-token-42")
    assert hub.token_source() == "environment variable QAI_HUB_API_TOKEN"
    assert "ENV-token-42" not in hub.scrub("x ENV-token-42 y")


def test_token_never_printed_or_written_on_failure(cli_runner, fake_token, onnx_artifact, monkeypatch, tmp_path):
    _use_client(monkeypatch, FakeClient(leak=True))
    report = tmp_path / "report.json"
    res = cli_runner.invoke(cli, ["--debug", "hub", "compile", str(onnx_artifact), "--report", str(report)])
    assert res.exit_code == 1
    assert "listing devices failed" in res.output and "***" in res.output
    assert FAKE_TOKEN not in res.output
    assert FAKE_TOKEN not in _all_text(onnx_artifact) and not report.exists()


def test_unknown_device_is_bad_input(cli_runner, fake_token, onnx_artifact, monkeypatch):
    _use_client(monkeypatch, FakeClient())
    res = cli_runner.invoke(cli, ["hub", "compile", str(onnx_artifact), "--device", "Nokia 3310"])
    assert res.exit_code == 2 and "qai-hub list-devices" in res.output


def test_compile_and_profile_through_the_job_chain(cli_runner, fake_token, onnx_artifact, monkeypatch, tmp_path):
    client = FakeClient()
    _use_client(monkeypatch, client)
    report = tmp_path / "profile.json"
    res = cli_runner.invoke(cli, ["hub", "profile", str(onnx_artifact), "--device", DEVICE,
                                  "--target", "qnn_context_binary", "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert client.calls[0] == ("upload", "model.onnx")
    kind, specs, options = client.calls[1]
    assert kind == "compile" and "--target_runtime qnn_context_binary" in options
    assert list(specs.values())[0] == ((1, 1, 28, 28), "float32")
    assert client.calls[2] == ("inference", None, True)          # a profile is an inference job with profile=True
    data = json.loads(report.read_text())
    assert [j["job"] for j in data["jobs"]] == ["compile", "profile"]
    assert data["results"][0]["inference_ms"] == pytest.approx(1.234)
    assert data["results"][0]["ops_per_compute_unit"] == {"NPU": 5, "CPU": 1}
    assert FAKE_TOKEN not in report.read_text() + res.output


def test_failed_compile_job_exits_1_with_its_link(cli_runner, fake_token, onnx_artifact, monkeypatch):
    _use_client(monkeypatch, FakeClient(fail_compile=True))
    res = cli_runner.invoke(cli, ["hub", "compile", str(onnx_artifact)])
    assert res.exit_code == 1 and "QNN compiler error" in res.output and "jobs/jc1" in res.output


def _local_logits(artifact, n):
    from edgevit.data import load_data
    from edgevit.data.preprocess import Preprocess
    from runtimes.runner import open_runner, run_batched
    from runtimes.artifact import load_artifact
    art = load_artifact(artifact)
    x, _ = load_data(f"fashion-mnist:{n}", Preprocess.from_dict(art.manifest["preprocess"]), "test", 0)
    return run_batched(open_runner(art), x.numpy(), 1)


@pytest.mark.parametrize("noise,code", [(1e-4, 0), (None, 1)])
def test_infer_compares_phone_outputs_with_the_local_run(cli_runner, fake_token, onnx_artifact, monkeypatch,
                                                         tmp_path, noise, code):
    local = _local_logits(onnx_artifact, 4)
    phone = local + noise if noise is not None else local[:, ::-1] * 3  # None: a phone that got it wrong
    client = FakeClient(reply={"logits": [phone[i:i + 1] for i in range(4)]})
    _use_client(monkeypatch, client)
    report = tmp_path / "infer.json"
    res = cli_runner.invoke(cli, ["hub", "infer", str(onnx_artifact), "--data", "fashion-mnist:4",
                                  "--report", str(report)])
    assert res.exit_code == code, res.output
    assert ("inference", {"input": 4}, False) in client.calls
    row = json.loads(report.read_text())["results"][0]
    assert row["images"] == 4
    assert (row["parity_vs_local"]["top1_agreement"] == 1.0) == (code == 0)
