#!/usr/bin/env python3
"""Compile, profile and run an edgevit artifact on a real Snapdragon phone through Qualcomm AI Hub.

Prints the on-device latency from the profile job and compares the phone's outputs with a local run of
the same artifact (onnxruntime or ai-edge-litert) on the same images. Needs `qai-hub` and an API token;
without one it says how to configure it and exits 2.

    python run_on_device.py ARTIFACT_DIR --device "Samsung Galaxy S24" [--images a.png b.png] [--n 8]
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "device_demo"))
from classify import Onnx, Tflite, load_manifest, preprocess  # noqa: E402  (same folder family, no torch)

TOKEN_HELP = ("no Qualcomm AI Hub API token: sign in at https://workbench.aihub.qualcomm.com, copy the token "
              "from Account → Settings, then run `qai-hub configure --api_token YOUR_TOKEN` "
              "(or export QAI_HUB_API_TOKEN=YOUR_TOKEN)")
TARGET = {"onnx": "onnx", "tflite": "tflite"}


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def has_token() -> bool:
    if os.environ.get("QAI_HUB_API_TOKEN", "").strip():
        return True
    ini = Path(os.environ.get("QAIHUB_CLIENT_INI", Path.home() / ".qai_hub" / "client.ini"))
    cfg = configparser.ConfigParser()
    cfg.read(ini)
    return bool(cfg.get("api", "api_token", fallback="").strip())


def client():
    try:
        import qai_hub
    except ImportError:
        fail("qai-hub is not installed; pip install qai-hub (or edgevit[hub])")
    token = os.environ.get("QAI_HUB_API_TOKEN", "").strip()
    if token:   # the token goes to the client object only; it is never printed
        from qai_hub.client import Client, ClientConfig
        return Client(ClientConfig(api_url="https://workbench.aihub.qualcomm.com",
                                   web_url="https://workbench.aihub.qualcomm.com", api_token=token, verbose=False))
    return qai_hub


def sample_images(m: dict, n: int) -> np.ndarray:
    """Seeded Gaussian inputs of the artifact's shape when no images are given (latency and parity only)."""
    shape = [1 if not isinstance(d, int) else d for d in m["input"]["shape"]]
    return np.random.default_rng(0).standard_normal((n, *shape[1:])).astype(np.float32)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--device", default="Samsung Galaxy S24", help="a device name from `qai-hub list-devices`")
    ap.add_argument("--images", nargs="*", default=[], help="image files (default: --n seeded random inputs)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--report", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    m = load_manifest(a.artifact)                  # validates before anything leaves this machine
    if m["runtime"] not in TARGET:
        fail(f"{m['runtime']} artifacts are not handled here; export onnx or tflite")
    if not has_token():
        fail(TOKEN_HELP)
    hub = client()
    devices = {d.name for d in hub.get_devices()}
    if a.device not in devices:
        fail(f"unknown device {a.device!r}; `qai-hub list-devices` lists them (e.g. {sorted(devices)[:3]})")
    device = hub.Device(a.device) if hasattr(hub, "Device") else __import__("qai_hub").Device(a.device)
    x = preprocess(a.images, m["preprocess"]) if a.images else sample_images(m, a.n)
    name = m["input"]["name"]
    compile_job = hub.submit_compile_job(model=str(a.artifact / m["entry"]), device=device,
                                         input_specs={name: ((1, *x.shape[1:]), "float32")},
                                         options=f"--target_runtime {TARGET[m['runtime']]}",
                                         name=f"edgevit {m.get('model', {}).get('name', '')}")
    print(f"compile job {compile_job.job_id}: waiting …")
    target = compile_job.get_target_model()
    if target is None:
        fail(f"compile failed on AI Hub: {compile_job.get_status().message}")
    profile = hub.submit_profile_job(model=target, device=device).download_profile()
    on_device_ms = profile["execution_summary"]["estimated_inference_time"] / 1e3
    out = hub.submit_inference_job(model=target, device=device,
                                   inputs={name: [x[i:i + 1] for i in range(len(x))]}).download_output_data()
    phone = np.concatenate(next(iter(out.values())))
    local_model = (Onnx if m["runtime"] == "onnx" else Tflite)(a.artifact, m, 1)
    local = np.concatenate([local_model(x[i:i + 1]) for i in range(len(x))])
    err = float(np.abs(phone - local).max())
    agree = float((phone.argmax(-1) == local.argmax(-1)).mean())
    sqnr = float(10 * np.log10((local ** 2).sum() / max(((phone - local) ** 2).sum(), 1e-30)))
    res = {"device": a.device, "runtime": m["runtime"], "on_device_ms": on_device_ms, "images": len(x),
           "top1_agreement_vs_local": agree, "max_abs_vs_local": err, "sqnr_db_vs_local": sqnr,
           "jobs": {"compile": compile_job.job_id}}
    print(f"{a.device}: {on_device_ms:.3f} ms per inference (AI Hub profile); outputs vs local "
          f"{m['runtime']}: top-1 agreement {100 * agree:.1f}%, max abs {err:.3g}, SQNR {sqnr:.1f} dB")
    if a.report:
        a.report.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
