"""Artifacts are exact on every x86 CPU, not only on the one that exported them.

onnxruntime's u8×s8 kernels saturate on x86 CPUs without VNNI. Whatever CPU runs this suite, the
emulated test runs the artifacts on an AVX2-only CPU: `qemu-x86_64-static -cpu max` (QEMU's TCG has
AVX2 but no AVX-512/VNNI), through edgevit's own runner, and holds them to their export parity class.
Before `session.x64quantprecision` and the explicit int8 zero points, vit-small W8A8 agreed 98.0 % /
24.5 dB there (and onnxruntime refused the graph with the setting on).
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.cli import cli

ROOT = Path(__file__).resolve().parents[1]
QEMU = shutil.which("qemu-x86_64-static")

# Runs inside the emulated CPU: the artifact through runtimes.runner exactly as `edgevit run` opens it.
_RUN = """
import sys, numpy as np
from runtimes.runner import open_runner
r = open_runner(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.concatenate([r.run(x[i:i + 64]) for i in range(0, len(x), 64)]))
"""


def _quantized_artifact(cli_runner, tmp: Path, model: str, *export_args: str) -> tuple[Path, Path]:
    q, a = tmp / f"{model}-q", tmp / f"{model}-a"
    r = cli_runner.invoke(cli, ["quantize", model, "--fmt", "int", "--bits", "w8a8", "--calib", "fashion-mnist:64",
                                "--eval-data", "fashion-mnist:64", "--out", str(q), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["spec"]["bits"] == "w8a8"    # --json: the report, nothing else on stdout
    r = cli_runner.invoke(cli, ["export", str(q), "--runtime", "onnx", "--out", str(a),
                                "--parity-data", "fashion-mnist:128", *export_args])
    assert r.exit_code == 0, r.output
    return q, a


def test_int8_manifest_carries_the_portable_session_option(cli_runner, tmp_path):
    from runtimes.machine import u8s8_exact
    from runtimes.onnx.session import PORTABLE_CONFIG, session_options
    _, a = _quantized_artifact(cli_runner, tmp_path, "vit-tiny")
    m = json.loads((a / "manifest.json").read_text())
    assert PORTABLE_CONFIG.items() <= m["quant"]["runtime_options"].items()
    machine = m["parity"]["machine"]
    assert machine["arch"] and machine["int8_class"] and isinstance(machine["int8_features"], list)
    def entry(**kw):
        opts = session_options(config=m["quant"]["runtime_options"], **kw)
        try:
            return opts.get_session_config_entry("session.x64quantprecision")
        except Exception:   # noqa: BLE001 — onnxruntime raises its own type for an absent key
            return None
    assert entry(exact_int8=True) == "1" and entry(exact_int8=False) is None
    assert entry() == (None if u8s8_exact() else "1")       # applied where this CPU's u8s8 kernels saturate
    # the device demo (no edgevit installed) opens the same session entries from the manifest
    demo = (ROOT / "examples" / "device_demo" / "classify.py").read_text()
    assert 'get("runtime_options")' in demo and "def u8s8_exact" in demo


def test_check_parity_names_both_machines_and_flags_a_changed_result(cli_runner, tmp_path):
    from runtimes import parity
    _, a = _quantized_artifact(cli_runner, tmp_path, "vit-tiny")
    r = cli_runner.invoke(cli, ["check-parity", str(a), "--data", "fashion-mnist:64"])
    assert r.exit_code == 0, r.output
    assert "recorded at export on" in r.output and "measured here on" in r.output and "differs" not in r.output
    r = cli_runner.invoke(cli, ["check-parity", str(a), "--data", "fashion-mnist:64", "--json"])
    report = json.loads(r.output)
    assert r.exit_code == 0 and report["ok"] and report["metrics"]["n"] == 64 and report["machine"]["int8_class"]
    path = a / "manifest.json"          # pretend export measured something else (another CPU's kernels)
    m = json.loads(path.read_text())
    m["parity"]["metrics"]["sqnr_db"] = 24.5
    path.write_text(json.dumps(m))
    r = cli_runner.invoke(cli, ["check-parity", str(a), "--data", "fashion-mnist:64"])
    assert r.exit_code == 0 and "differs from the recorded one" in r.output and "24.5 dB recorded" in r.output
    assert parity.differences({"sqnr_db": "inf", "top1_agreement": 1.0}, {"sqnr_db": 70.0, "top1_agreement": 1.0}) == []


def _torch_and_emulated(q, a, tmp_path):
    """(test images, the checkpoint's torch logits, artifact `a`'s logits under `qemu-x86_64 -cpu max`: AVX2,
    no AVX-512 or VNNI, so onnxruntime dispatches its AVX2 int8 kernels)."""
    from edgevit.data import load_data
    from edgevit.ptq import load_checkpoint
    qmodel, meta = load_checkpoint(q)
    x, _ = load_data("fashion-mnist:256", meta.preprocess, split="test", seed=3)
    with torch.no_grad():
        ref = qmodel.eval()(x).numpy()
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "y.npy"
    subprocess.run([QEMU, "-cpu", "max", sys.executable, "-c", _RUN, str(a), str(tmp_path / "x.npy"), str(out)],
                   cwd=ROOT, check=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return x, ref, np.load(out)


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-user-static is not installed (make install adds it)")
@pytest.mark.parametrize("model,export_args", [("vit-small", ()),
                                               ("mobilenet-mini", ("--graph-form", "integer",
                                                                   "--calib-data", "fashion-mnist:64"))])
def test_int8_artifacts_are_exact_on_an_avx2_cpu(cli_runner, tmp_path, model, export_args):
    from runtimes import parity
    from runtimes.runner import open_runner, run_batched
    q, a = _quantized_artifact(cli_runner, tmp_path, model, *export_args)
    x, ref, emulated = _torch_and_emulated(q, a, tmp_path)
    m = parity.compare(ref, emulated)
    thresholds = json.loads((a / "manifest.json").read_text())["parity"]["thresholds"]
    assert parity.failures(m, thresholds) == [], m
    # and the same numbers as this machine's CPU, whatever it has: integer arithmetic is exact on both
    native = run_batched(open_runner(a), x.numpy(), 64)
    same = parity.compare(native, emulated)
    assert same["top1_agreement"] == 1.0 and (same["sqnr_db"] == "inf" or same["sqnr_db"] > 60), same


def test_sigterm_leaves_no_partial_directory(tmp_path):
    """SIGTERM mid-export unwinds like Ctrl-C: the staging directory goes, nothing is half-written."""
    out = tmp_path / "art"
    proc = subprocess.Popen([sys.executable, "-m", "edgevit.cli", "export", "vit-small", "--runtime", "onnx",
                             "--out", str(out), "--parity-data", "fashion-mnist:512"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".art.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "export finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated" in err
    assert list(tmp_path.iterdir()) == []


def _edgevit(args: list[str], threads: int, cwd: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(threads), "HOME": str(cwd)}
    r = subprocess.run([sys.executable, "-m", "edgevit.cli", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_same_seed_same_bytes_at_1_and_2_threads(tmp_path):
    """quantize (rtn, adaround, brecq) and export write identical files whatever the thread count."""
    (tmp_path / "r.yaml").write_text("reconstruction:\n  iters: 20\n  batch_size: 16\n")
    for threads in (1, 2):
        for method in ("rtn", "adaround", "brecq"):
            _edgevit(["quantize", "vit-tiny", "--fmt", "int", "--bits", "w4a8", "--method", method, "--recipe", "r.yaml",
                      "--calib", "fashion-mnist:32", "--eval-limit", "32", "--out", f"q-{method}-{threads}"],
                     threads, tmp_path)
        _edgevit(["export", "q-brecq-1", "--runtime", "onnx", "--out", f"a-{threads}",
                  "--parity-data", "fashion-mnist:32"], threads, tmp_path)
    for method in ("rtn", "adaround", "brecq"):
        for name in ("weights.safetensors", "quant.json"):
            one, two = (tmp_path / f"q-{method}-{t}" / name for t in (1, 2))
            assert one.read_bytes() == two.read_bytes(), f"{method}: {name} differs between 1 and 2 threads"
    assert (tmp_path / "a-1" / "model.onnx").read_bytes() == (tmp_path / "a-2" / "model.onnx").read_bytes()
    # and the seed matters: a different one gives a different calibration subset, so different scales
    _edgevit(["quantize", "vit-tiny", "--fmt", "int", "--bits", "w4a8", "--calib", "fashion-mnist:32", "--seed", "1",
              "--eval-limit", "32", "--out", "q-seed1"], 1, tmp_path)
    assert (tmp_path / "q-seed1" / "quant.json").read_bytes() != (tmp_path / "q-rtn-1" / "quant.json").read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-user-static is not installed (make install adds it)")
def test_fp4_w4a6_integer_matmuls_are_exact_on_an_avx2_cpu(cli_runner, tmp_path):
    """FP4 W4A6 linears on onnxruntime's int8 kernels (runtimes.onnx.quantized._IntMatMulKind) on an emulated
    AVX2-only CPU: |activation| ≤ 60 (+128 as uint8) and |weight| ≤ 12 keep the u8×s8 int16 pair sums far from
    saturation, so the integer sums equal this CPU's; only float kernels (LayerNorm, GELU, softmax) may differ."""
    from runtimes import parity
    from runtimes.runner import open_runner, run_batched
    q, a = tmp_path / "q", tmp_path / "a"
    r = cli_runner.invoke(cli, ["quantize", "vit-small", "--fmt", "fp4", "--bits", "w4a6", "--calib", "fashion-mnist:64",
                                "--eval-data", "fashion-mnist:64", "--out", str(q)])
    assert r.exit_code == 0, r.output
    r = cli_runner.invoke(cli, ["export", str(q), "--runtime", "onnx", "--out", str(a), "--parity-data", "fashion-mnist:128"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["quant"]["graph_form"].startswith("int8-matmul-fp4_e2m1")
    x, ref, emulated = _torch_and_emulated(q, a, tmp_path)
    assert parity.failures(parity.compare(ref, emulated), manifest["parity"]["thresholds"]) == []
    same = parity.compare(run_batched(open_runner(a), x.numpy(), 64), emulated)
    assert same["top1_agreement"] == 1.0 and (same["sqnr_db"] == "inf" or same["sqnr_db"] > 40), same
