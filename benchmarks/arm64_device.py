"""edgevit's artifacts on an emulated ARM64 edge device, checked against the torch model with export's parity classes.

The device is a Debian bookworm arm64 root file system (debootstrap + qemu-user-static, built once by
examples/device_demo/arm64/build_rootfs.sh) holding only python3 and PyPI's aarch64 wheels of onnxruntime,
ai-edge-litert, numpy and Pillow: what a Raspberry Pi or a phone's CPU runs, including onnxruntime's ARM
int8 kernels, which are different code from x86's. This script, on the host:

1. exports the artifact set with the `edgevit` CLI into a work directory: FP32 and W8A8 ONNX of vit-small
   and mobilenet-mini, FP4 W4A6 ONNX of vit-small, FP32 and INT8 TFLite of vit-small (each export passes
   its own parity check on this host first);
2. writes N Fashion-MNIST test images (seed 0 subset, as export uses) as 28×28 grayscale PNG files;
3. computes each artifact's torch reference (the model its manifest records, as `edgevit check-parity`
   reloads it) on exactly the array the device demo makes of those PNG files (its own `preprocess`);
4. copies examples/device_demo/classify.py, the PNGs and the artifacts into the root and runs the real demo
   there, `chroot ROOT python3 classify.py ART *.png --json --logits`, under emulation, once per emulated
   CPU model (QEMU_CPU): qemu's `max` (dot-product + i8mm), cortex-a76 (Raspberry Pi 5: dot-product) and
   cortex-a72 (Raspberry Pi 4: no dot-product), i.e. each of the ARM int8 kernel paths;
5. compares the device's logits with `runtimes.parity.compare` against each manifest's thresholds
   (`parity.thresholds`, the bar export passed) and writes benchmarks/results/arm64_device.{json,md}.

    sudo examples/device_demo/arm64/build_rootfs.sh          # once (~3 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/arm64_device.py [--images 256] [--root DIR] [--keep]

Needs root (chroot). Exit status 1 when an artifact fails its parity class on the device.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROOT = Path(os.environ.get("EDGEVIT_ARM64_ROOT", Path.home() / ".cache/edgevit/arm64-rootfs"))
MARKER = ".edgevit-arm64-ready"
DEMO = REPO / "examples/device_demo/classify.py"
RESULTS = REPO / "benchmarks/results"
CALIB = "fashion-mnist:256"

# name → (model, steps); each step is an edgevit command line with {q} (a quantised checkpoint dir) and
# {out} (the artifact dir) filled in.
ARTIFACTS = {
    "vit-small-onnx-fp32": [["export", "vit-small", "--runtime", "onnx", "--out", "{out}"]],
    "vit-small-onnx-w8a8": [["quantize", "vit-small", "--fmt", "int", "--bits", "w8a8", "--calib", CALIB,
                             "--eval-limit", "256", "--out", "{q}"],
                            ["export", "{q}", "--runtime", "onnx", "--out", "{out}"]],
    "vit-small-onnx-fp4-w4a6": [["quantize", "vit-small", "--fmt", "fp4", "--bits", "w4a6", "--calib", CALIB,
                                 "--eval-limit", "256", "--out", "{q}"],
                                ["export", "{q}", "--runtime", "onnx", "--out", "{out}"]],
    "mobilenet-mini-onnx-fp32": [["export", "mobilenet-mini", "--runtime", "onnx", "--out", "{out}"]],
    "mobilenet-mini-onnx-w8a8": [["quantize", "mobilenet-mini", "--fmt", "int", "--bits", "w8a8", "--calib", CALIB,
                                  "--eval-limit", "256", "--out", "{q}"],
                                 ["export", "{q}", "--runtime", "onnx", "--out", "{out}"]],
    "vit-small-tflite-fp32": [["export", "vit-small", "--runtime", "tflite", "--precision", "fp32", "--out", "{out}"]],
    "vit-small-tflite-w8a8": [["export", "vit-small", "--runtime", "tflite", "--precision", "w8a8",
                               "--calib-data", CALIB, "--out", "{out}"]],
}

# Runs on the device: what the emulated CPU advertises. /proc is deliberately not mounted in the chroot
# (onnxruntime's cpuinfo crashed under qemu with it), so the features come from getauxval(AT_HWCAP/2).
DEVICE_PROBE = r"""
import ctypes, json, platform, sys, importlib.metadata as md
HWCAP = ["fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp",
         "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512",
         "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg"]
HWCAP2 = ["dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint",
          "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte", "ecv",
          "afp", "rpres", "mte3", "sme"]
libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
libc.getauxval.argtypes = [ctypes.c_ulong]
h1, h2 = libc.getauxval(16), libc.getauxval(26)
feats = [n for i, n in enumerate(HWCAP) if h1 >> i & 1] + [n for i, n in enumerate(HWCAP2) if h2 >> i & 1]
try:
    cpuinfo = open("/proc/cpuinfo").read()
    flags = sorted({w for l in cpuinfo.splitlines() if l.lower().startswith("features") for w in l.split(":", 1)[1].split()})
except OSError as e:
    cpuinfo, flags = None, f"not readable ({type(e).__name__}: /proc is not mounted in the chroot)"
out = {"machine": platform.machine(), "python": sys.version.split()[0], "hwcap_features": feats,
       "proc_cpuinfo_features": flags}
for pkg in ("onnxruntime", "ai-edge-litert", "numpy", "pillow"):
    try:
        out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
        out[pkg] = None
print(json.dumps(out))
"""


def log(msg: str) -> None:
    print(f"[arm64] {msg}", file=sys.stderr, flush=True)


# Emulated CPU models (QEMU_CPU), one per kernel path of onnxruntime's and XNNPACK's ARM int8 code:
# qemu's `max` (dot-product + i8mm + SVE: a recent phone core), cortex-a76 (dot-product, no i8mm: Raspberry
# Pi 5), cortex-a72 (plain NEON, no dot-product: Raspberry Pi 4).
CPUS = {"max": "qemu max: dot-product + i8mm + SVE (recent phone cores)",
        "cortex-a76": "Cortex-A76: dot-product, no i8mm (Raspberry Pi 5)",
        "cortex-a72": "Cortex-A72: NEON, no dot-product (Raspberry Pi 4)"}


def device_env(cpu: str | None) -> dict:
    """A clean environment for processes in the chroot (QEMU_CPU picks the emulated CPU model)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if cpu:
        env["QEMU_CPU"] = cpu
    return env


def host_cpu() -> dict:
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    int8 = [f for f in flags if f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
                                      "avx512_bf16", "amx_tile")]
    import onnxruntime
    return {"model": model, "machine": platform.machine(), "int8_features": int8,
            "onnxruntime": onnxruntime.__version__}


def qemu_version() -> str | None:
    for exe in ("qemu-aarch64-static", "qemu-aarch64"):
        path = shutil.which(exe)
        if path:
            out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            return out.splitlines()[0] if out else None
    return None


def edgevit(args: list[str], log_to: Path) -> None:
    exe = Path(sys.executable).with_name("edgevit")
    cmd = [str(exe) if exe.exists() else "edgevit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1"), "COLUMNS": "200"}
    log("$ " + " ".join(cmd))
    with open(log_to, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if r.returncode != 0:
        tail = "".join(log_to.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {r.returncode}):\n{tail}")


def export_all(names: list[str], work: Path) -> dict[str, Path]:
    """Artifact dirs by name; an artifact already in `work` (a manifest.json there) is reused."""
    arts, logf = {}, work / "export.log"
    for name in names:
        out, q = work / "artifacts" / name, work / "checkpoints" / name
        if (out / "manifest.json").is_file():
            log(f"reusing {out}")
        else:
            t = time.perf_counter()
            for step in ARTIFACTS[name]:
                if step[0] == "quantize" and (q / "report.json").is_file():
                    continue
                edgevit([a.format(q=q, out=out) for a in step] + (["--force"] if step[0] == "quantize" else []),
                        logf)
            log(f"exported {name} in {time.perf_counter() - t:.0f} s")
        arts[name] = out
    return arts


def write_images(n: int, seed: int, folder: Path) -> tuple[list[Path], list[int]]:
    """The seed's N-image Fashion-MNIST test subset (as `edgevit.data.load_data` draws it) as 28×28 PNGs."""
    import numpy as np
    from PIL import Image

    from edgevit.data.fashion_mnist import load_fashion_mnist
    images, labels = load_fashion_mnist("test")
    images, labels = np.asarray(images), np.asarray(labels)
    idx = np.arange(len(images))
    if n < len(images):
        idx = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, i in enumerate(idx):
        p = folder / f"{k:04d}_test{i}.png"
        Image.fromarray(images[i].astype(np.uint8), mode="L").save(p)
        paths.append(p)
    return paths, [int(labels[i]) for i in idx]


def demo_preprocess():
    """The device demo's own `preprocess` (the host runs the same numpy/Pillow code on the same PNG files)."""
    spec = importlib.util.spec_from_file_location("edgevit_device_demo_classify", DEMO)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.preprocess


def reference_logits(art: Path, x, cache: dict):
    """The torch model the artifact's manifest records (as `edgevit check-parity` reloads it) on x."""
    import torch

    from edgevit.artifacts import load_any
    from runtimes.reference import torch_logits
    reload = (json.loads((art / "manifest.json").read_text()).get("model") or {}).get("reload") or {}
    if reload.get("kind") == "registry":
        key = ("registry", reload["name"], reload.get("weights"))
        model_ref = (reload["name"], reload.get("weights"))
    elif reload.get("kind") == "quantized":
        key = ("quantized", reload["path"])
        model_ref = (reload["path"], None)
    else:
        raise RuntimeError(f"{art} does not record its torch model")
    if key not in cache:
        cache.clear()                      # one model in memory at a time
        cache[key] = load_any(model_ref[0], model_ref[1], False)[0].eval()
    with torch.no_grad():
        return torch_logits(cache[key], x)


def host_runtime_logits(art: Path, x):
    """The same artifact on this host through edgevit's own runner (as `edgevit check-parity` runs it)."""
    from runtimes.artifact import load_artifact
    from runtimes.runner import open_runner, run_batched
    a = load_artifact(str(art))
    static = isinstance(a.manifest["input"]["shape"][0], int)
    return run_batched(open_runner(a, threads=1), x, 1 if static else 256)


def run_on_device(root: Path, stage: Path, art_name: str, images: list[str], cpu: str | None,
                  timeout: int) -> tuple[dict, float, str]:
    """Run the demo in the chroot; (its JSON, wall seconds, stderr)."""
    inside = "/" + str(stage.relative_to(root))
    cmd = ["chroot", str(root), "python3", f"{inside}/classify.py", f"{inside}/artifacts/{art_name}",
           *[f"{inside}/images/{Path(p).name}" for p in images], "--json", "--logits", "--top", "1", "--threads", "1"]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=device_env(cpu), timeout=timeout)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"classify.py on the device failed for {art_name} (exit {r.returncode}):\n"
                           + "\n".join(r.stderr.strip().splitlines()[-15:]))
    return json.loads(r.stdout), wall, r.stderr


def probe_device(root: Path, cpu: str | None) -> dict:
    r = subprocess.run(["chroot", str(root), "python3", "-c", DEVICE_PROBE], capture_output=True, text=True,
                       env=device_env(cpu), timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"the device probe failed:\n{r.stderr[-2000:]}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    u = subprocess.run(["chroot", str(root), "uname", "-m"], capture_output=True, text=True, env=device_env(cpu))
    info["uname_m"] = u.stdout.strip()
    info["qemu_cpu"] = cpu or "max"
    info["cpu_description"] = CPUS.get(cpu or "max", cpu)
    info["emulator"] = qemu_version()
    marker = root / MARKER
    info["rootfs"] = {"path": str(root), "marker": marker.read_text().strip() if marker.is_file() else None}
    return info


def evaluate(name: str, cpu: str, m: dict, out: dict, ref, host, labels, wall: float, err: str) -> dict:
    """One result row: the device's logits against the torch reference, judged by the manifest's thresholds."""
    import numpy as np

    from runtimes import parity
    got = np.asarray([r["logits"] for r in out["results"]], np.float32)
    met = parity.compare(ref, got)
    th = m["parity"]["thresholds"]
    bad = parity.failures(met, th, parity.ties_excluded(m["parity"].get("precision_class", "")))
    prec = out.get("precision") or (m.get("quant") or {}).get("precision", "fp32")
    lines = [l for l in err.strip().splitlines() if l.strip()]
    row = {"name": name, "cpu": cpu, "runtime": m["runtime"], "precision": prec,
           "class": m["parity"].get("precision_class") or parity.precision_class(prec),
           **met, "thresholds": th, "pass": not bad, "failures": bad,
           "device_vs_host_runtime": {k: v for k, v in parity.compare(host, got).items() if k != "n"},
           "host_runtime_vs_torch": {k: v for k, v in parity.compare(ref, host).items() if k != "n"},
           "top1_device_vs_labels": float((got.argmax(-1) == labels).mean()),
           "top1_torch_vs_labels": float((ref.argmax(-1) == labels).mean()),
           "host_export_parity": m["parity"].get("metrics"),
           "host_export_machine": m["parity"].get("machine"),
           "runtime_options": (m.get("quant") or {}).get("runtime_options"),
           "device_wall_s": round(wall, 2),
           "device_ms_per_image_median": round(float(np.median([r["latency_ms"] for r in out["results"]])), 2),
           "device_stderr": {"lines": len(lines), "first": lines[:2]}}
    log(f"{name} on {cpu}: top-1 {100 * met['top1_agreement']:.2f}%, max abs {met['max_abs']:.2e}, "
        f"SQNR {met['sqnr_db']} dB → {'pass' if not bad else 'FAIL ' + '; '.join(bad)} ({wall:.0f} s)")
    return row


def fmt_sqnr(v) -> str:
    return "inf" if v == "inf" else f"{v:.1f}"


def _cpuinfo(d: dict) -> str:
    v = d["proc_cpuinfo_features"]
    return v if isinstance(v, str) else " ".join(v)


def markdown(res: dict) -> str:
    h = res["host"]
    d = next(iter(res["devices"].values()))
    lines = [
        "# edgevit artifacts on an emulated ARM64 device",
        "",
        f"Device: Debian bookworm arm64 root file system under qemu-user ({d.get('emulator') or 'qemu'}); "
        f"`uname -m` in the chroot: `{d['uname_m']}`; python {d['python']}, onnxruntime {d['onnxruntime']}, "
        f"ai-edge-litert {d['ai-edge-litert']}, numpy {d['numpy']}, Pillow {d['pillow']} (PyPI aarch64 wheels). "
        f"/proc/cpuinfo in the chroot: {_cpuinfo(d)}; the CPU features below are the AT_HWCAP/AT_HWCAP2 bits "
        "the emulated CPU advertises (what onnxruntime falls back to when its cpuinfo cannot read /sys).",
        "",
        "| emulated CPU (QEMU_CPU) | what it stands for | int8-relevant features seen |",
        "|---|---|---|",
        *[f"| {cpu} | {dv['cpu_description']} | "
          f"{' '.join(f for f in dv['hwcap_features'] if f in ('asimd', 'asimddp', 'i8mm', 'sve', 'sve2', 'svei8mm', 'bf16', 'fphp', 'asimdhp', 'sme')) or '-'} |"
          for cpu, dv in res["devices"].items()],
        "",
        f"Host: {h['model']} ({h['machine']}; int8 features {', '.join(h['int8_features']) or 'none'}), "
        f"onnxruntime {h['onnxruntime']} for the exports.",
        "",
        f"{res['n_images']} Fashion-MNIST test images (seed {res['seed']} subset) as 28×28 PNG files, classified on the "
        "device by `examples/device_demo/classify.py --json --logits` (batch 1, 1 thread); torch reference "
        "from the model each manifest records, on the same PNGs through the demo's own preprocessing. "
        "Thresholds: the manifest's `parity.thresholds` (the class export passed). Wall time is the whole "
        "emulated demo process (start-up, model load, all images), not device speed. \"host x86 runtime\" is the same "
        "artifact run here by edgevit's runner on the same images; \"device vs host runtime\" compares the ARM "
        "and x86 kernels' outputs directly.",
        "",
        "| artifact | runtime | precision | class | device CPU | images | top-1 agreement | max abs | SQNR dB | "
        "host x86 runtime vs torch, same images | device vs host runtime | top-1 vs labels device / torch | "
        "thresholds | result | emulated wall s |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|---|---|---|---|---:|",
    ]
    for r in res["artifacts"]:
        th = r["thresholds"]
        ths = ", ".join(f"{k} {'≤' if k in ('max_abs', 'max_rel') else '≥'} {v}" for k, v in th.items())
        hp, dh = r["host_runtime_vs_torch"], r["device_vs_host_runtime"]
        host = f"{100 * hp['top1_agreement']:.2f}% / {fmt_sqnr(hp['sqnr_db'])} dB"
        dvh = ("identical" if dh["max_abs"] == 0 else
               f"{100 * dh['top1_agreement']:.2f}% / max abs {dh['max_abs']:.1e}")
        lines.append(
            f"| {r['name']} | {r['runtime']} | {r['precision']} | {r['class']} | {r['cpu']} | {r['n']} | "
            f"{100 * r['top1_agreement']:.2f}% | {r['max_abs']:.2e} | {fmt_sqnr(r['sqnr_db'])} | {host} | {dvh} | "
            f"{100 * r['top1_device_vs_labels']:.1f}% / {100 * r['top1_torch_vs_labels']:.1f}% | {ths} | "
            f"{'pass' if r['pass'] else 'FAIL: ' + '; '.join(r['failures'])} | {r['device_wall_s']:.1f} |")
    lines += ["", f"All within their parity class: **{'yes' if res['all_pass'] else 'no'}**. "
              f"Export on the host {res['times']['export_s']:.0f} s, device runs {res['times']['device_s']:.0f} s "
              f"in total, whole run {res['times']['total_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the arm64 root file system (build_rootfs.sh)")
    ap.add_argument("--images", type=int, default=256, help="Fashion-MNIST test images per artifact")
    ap.add_argument("--seed", type=int, default=0, help="seed of the test subset (export's parity uses 0)")
    ap.add_argument("--only", default=",".join(ARTIFACTS), help="comma-separated artifact names: "
                    + ", ".join(ARTIFACTS))
    ap.add_argument("--cpus", default=",".join(CPUS),
                    help="comma-separated QEMU_CPU models to run every artifact on (default: %(default)s; "
                         "max = dot-product + i8mm, cortex-a76 = Raspberry Pi 5, cortex-a72 = Raspberry Pi 4)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep exports here (not deleted) and reuse the ones already there")
    ap.add_argument("--keep", action="store_true", help="keep the work directory and the files copied into the root")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where arm64_device.{json,md} go")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per device run")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    cpus = [c.strip() for c in a.cpus.split(",") if c.strip()]
    unknown = [n for n in names if n not in ARTIFACTS]
    if unknown:
        ap.error(f"unknown artifact(s) {', '.join(unknown)}; choose from {', '.join(ARTIFACTS)}")
    if a.images < 1:
        ap.error("--images must be >= 1")
    if not (a.root / MARKER).is_file():
        print(f"error: no ready arm64 root at {a.root} (no {MARKER}); build it with "
              "examples/device_demo/arm64/build_rootfs.sh", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("error: chroot needs root", file=sys.stderr)
        return 2

    import numpy as np
    import torch
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    keep = a.keep or a.workdir is not None
    work = a.workdir or Path(tempfile.mkdtemp(prefix="edgevit-arm64-"))
    work.mkdir(parents=True, exist_ok=True)
    stage = a.root / "opt" / f"edgevit-arm64-{os.getpid()}"
    try:
        devices = {cpu: probe_device(a.root, cpu) for cpu in cpus}
        for cpu, device in devices.items():
            log(f"device {cpu}: {device['uname_m']}, onnxruntime {device['onnxruntime']}, ai-edge-litert "
                f"{device['ai-edge-litert']}, features {' '.join(device['hwcap_features'])}")
        arts = export_all(names, work)
        t_export = time.perf_counter() - t0

        pngs, labels = write_images(a.images, a.seed, work / f"images-{a.images}-seed{a.seed}")
        labels = np.asarray(labels)
        (stage / "images").mkdir(parents=True)
        (stage / "artifacts").mkdir()
        shutil.copy2(DEMO, stage / "classify.py")
        for p in pngs:
            shutil.copy2(p, stage / "images" / p.name)
        preprocess = demo_preprocess()

        rows, cache, t_device = [], {}, 0.0
        for name in names:
            art = arts[name]
            m = json.loads((art / "manifest.json").read_text())
            x = preprocess([str(p) for p in pngs], m["preprocess"])
            ref = reference_logits(art, x, cache)
            host = host_runtime_logits(art, x)
            shutil.copytree(art, stage / "artifacts" / name)
            for cpu in cpus:
                log(f"running {name} on the device ({cpu}, {len(pngs)} images)")
                out, wall, err = run_on_device(a.root, stage, name, [p.name for p in pngs], cpu, a.timeout)
                t_device += wall
                rows.append(evaluate(name, cpu, m, out, ref, host, labels, wall, err))
            shutil.rmtree(stage / "artifacts" / name)
        res = {"what": "edgevit artifacts run by examples/device_demo/classify.py on an emulated arm64 device "
                       "(Debian bookworm, qemu-user), parity vs the torch model with each manifest's thresholds",
               "n_images": a.images, "seed": a.seed, "devices": devices, "host": host_cpu(),
               "artifacts": rows, "all_pass": all(r["pass"] for r in rows),
               "times": {"export_s": round(t_export, 1), "device_s": round(t_device, 1),
                         "total_s": round(time.perf_counter() - t0, 1)},
               "command": "benchmarks/arm64_device.py " + " ".join(argv if argv is not None else sys.argv[1:])}
        a.results.mkdir(parents=True, exist_ok=True)
        (a.results / "arm64_device.json").write_text(json.dumps(res, indent=2) + "\n")
        (a.results / "arm64_device.md").write_text(markdown(res))
        log(f"wrote {a.results / 'arm64_device.json'} and .md; all pass: {res['all_pass']}")
        print(markdown(res))
        return 0 if res["all_pass"] else 1
    finally:
        if a.keep:
            log(f"kept {stage} in the root")
        else:
            shutil.rmtree(stage, ignore_errors=True)
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
