"""Qualcomm AI Hub jobs for an edgevit artifact: compile, profile and inference on a real phone.

qai-hub is cloud-only and token-gated. The token is looked up (QAI_HUB_API_TOKEN, else qai-hub's own
`~/.qai_hub/client.ini` written by `qai-hub configure`), handed to the client object and nowhere else:
it is never returned, printed, logged or written, and every message that leaves this module passes
through `scrub`, so even an exception text that echoes a request header cannot leak it.
"""
from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtimes import parity
from runtimes.artifact import Artifact
from runtimes.errors import RuntimeArtifactError

TOKEN_ENV = "QAI_HUB_API_TOKEN"
CONFIG_ENV = "QAIHUB_CLIENT_INI"            # qai-hub's own override of the config file path
DEFAULT_URL = "https://workbench.aihub.qualcomm.com"
INSTALL_HINT = "pip install 'edgevit[hub]'"
CONFIGURE_HINT = (f"run `qai-hub configure --api_token YOUR_TOKEN` (token on {DEFAULT_URL}, Account page) "
                  f"or set {TOKEN_ENV}")
# What each artifact kind is compiled to when --target is not given.
DEFAULT_TARGET = {"onnx": "onnx", "tflite": "tflite", "qnn": "qnn_context_binary"}
TARGETS = ("tflite", "onnx", "qnn_context_binary", "qnn_dlc", "precompiled_qnn_onnx")


class HubError(RuntimeArtifactError):
    """Hub use is not possible as asked: no qai-hub, no token, unknown device, unusable artifact (exit 2)."""


class HubJobError(RuntimeError):
    """A hub job was submitted and failed, or the service could not be reached (exit 1)."""


def _config_path() -> Path:
    return Path(os.path.expanduser(os.environ.get(CONFIG_ENV, "~/.qai_hub/client.ini")))


def _read_config() -> dict:
    """The [api] section of qai-hub's config file ({} when absent or unreadable)."""
    path = _config_path()
    if not path.is_file():
        return {}
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        return {}
    return dict(parser["api"]) if parser.has_section("api") else {}


def _token() -> str | None:
    return os.environ.get(TOKEN_ENV, "").strip() or _read_config().get("api_token", "").strip() or None


def token_source() -> str | None:
    """Where a token would come from ('environment variable ...' / 'config file ...'), never the token."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return f"environment variable {TOKEN_ENV}"
    if _read_config().get("api_token", "").strip():
        return f"config file {_config_path()}"
    return None


def scrub(text: str) -> str:
    """`text` with the configured token (if any) replaced by '***'."""
    token = _token()
    return text.replace(token, "***") if token else text


def make_client():
    """A qai_hub.Client built from the token; HubError (exit 2) when qai-hub or the token is missing."""
    try:
        import qai_hub
    except ImportError as e:
        raise HubError(f"Qualcomm AI Hub jobs need the qai-hub package; {INSTALL_HINT}") from e
    token = _token()
    if token is None:
        raise HubError(f"no Qualcomm AI Hub API token is configured; {CONFIGURE_HINT}. "
                       "Artifacts are written without one; only hub jobs need it")
    cfg = _read_config()
    config = qai_hub.ClientConfig(api_url=cfg.get("api_url", DEFAULT_URL), web_url=cfg.get("web_url", DEFAULT_URL),
                                  api_token=token, verbose=False)
    return qai_hub.Client(config=config)


@dataclass
class HubJobs:
    """The compile → profile / inference chain for one artifact on one device.

    `client` is a qai_hub.Client (or anything with its methods: tests pass a fake); every call goes
    through `_call`, which turns the service's exceptions into one scrubbed HubJobError line.
    """
    client: object
    artifact: Artifact
    device_name: str
    target: str | None = None
    options: str = ""
    timeout_s: int | None = None
    log: list = field(default_factory=list)

    def __post_init__(self):
        self.target = self.target or DEFAULT_TARGET.get(self.artifact.runtime)
        if self.target not in TARGETS:
            raise HubError(f"cannot compile {self.artifact.runtime} artifacts for the hub "
                           f"(target {self.target!r}); use an onnx, tflite or qnn artifact and --target "
                           f"{'|'.join(TARGETS)}")
        if self.artifact.runtime == "tflite" and self.target != "tflite":
            raise HubError(f"a .tflite artifact compiles only to --target tflite, not {self.target}")
        shape = self.artifact.manifest["input"]["shape"]
        self.input_name = self.artifact.manifest["input"]["name"]
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in shape)  # the hub wants static shapes
        self._device = None

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (HubError, HubJobError):
            raise
        except Exception as e:  # noqa: BLE001 — qai-hub raises many types; all become one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise HubJobError(scrub(f"{what} failed: {type(e).__name__}: {first}")) from None

    def device(self):
        """The hub Device, checked against the service's list so a typo fails before any upload."""
        if self._device is None:
            found = self._call("listing devices", self.client.get_devices, name=self.device_name)
            if not found:
                raise HubError(f"Qualcomm AI Hub has no device named {self.device_name!r}; "
                               "list them with `qai-hub list-devices`")
            import qai_hub
            self._device = qai_hub.Device(self.device_name)  # the name alone: the newest OS the hub has
        return self._device

    def _wait(self, job, kind: str) -> dict:
        status = self._call(f"waiting for the {kind} job", job.wait, timeout=self.timeout_s)
        row = {"job": kind, "id": getattr(job, "job_id", None), "url": getattr(job, "url", None),
               "device": self.device_name, "status": getattr(status, "code", str(status))}
        self.log.append(row)
        if not getattr(status, "success", False):
            raise HubJobError(scrub(f"{kind} job {row['id']} on {self.device_name} failed: "
                                    f"{getattr(status, 'message', None) or row['status']} ({row['url']})"))
        return row

    def compile(self):
        """Upload the artifact's model file and compile it for the device; returns (target model, row)."""
        device = self.device()
        model = self._call("uploading the model", self.client.upload_model, str(self.artifact.entry))
        opts = " ".join(filter(None, [f"--target_runtime {self.target}", self.options]))
        job = self._call("submitting the compile job", self.client.submit_compile_job, model, device=device,
                         input_specs={self.input_name: (self.input_shape, "float32")}, options=opts,
                         name=f"edgevit {self.artifact.manifest.get('model', {}).get('name', '')}".strip())
        row = self._wait(job, "compile")
        row["target"] = self.target
        target_model = self._call("fetching the compiled model", job.get_target_model)
        return target_model, row

    def profile(self) -> dict:
        """Compile, then time the model on the phone: latency, peak memory, ops per compute unit."""
        target_model, _ = self.compile()
        job = self._call("submitting the profile job", self.client.submit_inference_job, target_model,
                         device=self.device(), inputs=None, profile=True)  # qai-hub >= 0.56 spelling
        row = self._wait(job, "profile")
        prof = self._call("downloading the profile", job.download_profile)
        summary = prof.get("execution_summary", {})
        units: dict[str, int] = {}
        for layer in prof.get("execution_detail", []):
            units[layer.get("compute_unit", "?")] = units.get(layer.get("compute_unit", "?"), 0) + 1
        t_us = summary.get("estimated_inference_time")
        row.update({"inference_ms": None if t_us is None else round(t_us / 1000, 4),
                    "peak_memory_bytes": summary.get("estimated_inference_peak_memory"),
                    "ops_per_compute_unit": units})
        return row

    def infer(self, x: np.ndarray, local: np.ndarray, thresholds: dict | None = None) -> dict:
        """Compile, run `x` on the phone and compare its logits with `local` (the artifact run here)."""
        x = np.ascontiguousarray(x, np.float32)
        if x.shape[1:] != self.input_shape[1:]:
            raise HubError(f"inputs of shape {x.shape[1:]} do not match the artifact's {self.input_shape[1:]}")
        target_model, _ = self.compile()
        per = self.input_shape[0]
        inputs = {self.input_name: [x[i:i + per] for i in range(0, len(x), per)]}
        job = self._call("submitting the inference job", self.client.submit_inference_job, target_model,
                         device=self.device(), inputs=inputs, profile=False)
        row = self._wait(job, "inference")
        outputs = self._call("downloading the outputs", job.download_output_data)
        if not outputs:
            raise HubJobError(f"inference job {row['id']} returned no outputs")
        got = np.concatenate([np.asarray(a, np.float32).reshape(-1, local.shape[-1])
                              for a in next(iter(outputs.values()))])
        metrics = parity.compare(local, got)
        row.update({"parity_vs_local": metrics, "images": int(len(x))})
        if thresholds:
            row["parity_failures"] = parity.failures(metrics, thresholds)
        return row
