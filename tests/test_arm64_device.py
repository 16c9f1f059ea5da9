"""The emulated ARM64 device (benchmarks/arm64_device.py): runs only where its cached root file system exists.

Build the root once with `examples/device_demo/arm64/build_rootfs.sh` (root, debootstrap, qemu-user-static;
~3 min) or `make arm64-check`. Then this runs vit-small FP32 and W8A8 ONNX artifacts on 32 test images
with the torch-free device demo under emulation (each emulated CPU model) and checks them against each manifest's parity class.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARM64_ROOT = Path(os.environ.get("EDGEVIT_ARM64_ROOT", Path.home() / ".cache/edgevit/arm64-rootfs"))
MARKER = ARM64_ROOT / ".edgevit-arm64-ready"


@pytest.mark.slow
@pytest.mark.skipif(not MARKER.is_file(),
                    reason=f"no cached arm64 root file system ({MARKER} missing); build it with "
                           "examples/device_demo/arm64/build_rootfs.sh or `make arm64-check`")
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() != 0, reason="running the arm64 root needs chroot (root)")
def test_arm64_device_onnx_fp32_and_w8a8_within_parity(tmp_path):
    names = ["vit-small-onnx-fp32", "vit-small-onnx-w8a8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/arm64_device.py"), "--root", str(ARM64_ROOT),
                        "--images", "32", "--only", ",".join(names), "--workdir", str(tmp_path / "work"),
                        "--results", str(tmp_path / "results")],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    res = json.loads((tmp_path / "results/arm64_device.json").read_text())
    assert {d["uname_m"] for d in res["devices"].values()} == {"aarch64"}
    cpus = list(res["devices"])                     # every artifact on every emulated CPU model
    assert [(a["name"], a["cpu"]) for a in res["artifacts"]] == [(n, c) for n in names for c in cpus]
    for a in res["artifacts"]:
        assert a["n"] == 32
        assert a["thresholds"], a["name"]           # the bar comes from the artifact's manifest
        assert a["pass"], f"{a['name']} on the arm64 device: {a['failures']}"
    for a in res["artifacts"]:
        assert a["class"] == ("fp32" if a["name"].endswith("fp32") else "int8")
    assert res["all_pass"] and r.returncode == 0
