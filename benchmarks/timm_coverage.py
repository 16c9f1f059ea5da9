"""timm coverage: which user backbones go through quantize → export → check-parity, and why the others fail.

Each architecture (random init, `timm:ARCH`) runs through the CLI as a new user would, one subprocess per
step with a timeout, on real photos (calibration, parity):

  int-w8a8, int-w8a16, fp4-w4a6   edgevit quantize timm:ARCH --fmt F --bits B --calib photos:16 --eval-data photos:16
                                  → edgevit export DIR --runtime onnx --parity-data photos:32
                                  → edgevit check-parity ART --data photos:32
  tflite-fp32                     edgevit export timm:ARCH --runtime tflite --parity-data photos:16
  qnn-w8a16 (--qnn only)          edgevit export timm:ARCH --runtime qnn --precision w8a16 --soc SM8650
                                  (the qnn-htp rewrite first; nodes placed on HTP / refused from the manifest)

Writes benchmarks/results/timm_coverage.{json,md}: pass/fail per cell, the one-line reason of each failure
(the CLI's own `error:` line), the time of each step. A run over a subset (`--archs`, `--cells`) merges into
the existing results. Run alone on an idle machine (the steps use one thread each):

    OMP_NUM_THREADS=1 python benchmarks/timm_coverage.py [--archs resnet18 deit_tiny_patch16_224] \\
        [--cells int-w8a16 tflite-fp32] [--qnn] [--workers 1] [--timeout 600]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# (architecture, kind): small variants, each model's default input size
ARCHS = [
    ("deit_tiny_patch16_224", "plain ViT"),
    ("swin_tiny_patch4_window7_224", "hierarchical ViT"),
    ("pvt_v2_b0", "hierarchical ViT"),
    ("convnext_atto", "ConvNeXt"),
    ("levit_128s", "hybrid conv-attention"),
    ("mobilevit_xxs", "hybrid conv-attention"),
    ("efficientformerv2_s0", "hybrid conv-attention"),
    ("coat_lite_tiny", "hybrid conv-attention"),
    ("fastvit_t8", "re-parameterised"),
    ("repvgg_a0", "re-parameterised"),
    ("mobileone_s0", "re-parameterised"),
    ("repvit_m0_9", "re-parameterised"),
    ("efficientvit_b0", "efficient ViT"),
    ("efficientvit_m0", "efficient ViT"),
    ("tiny_vit_5m_224", "efficient ViT"),
    ("edgenext_xx_small", "efficient ViT"),
    ("mobilenetv2_100", "mobile CNN"),
    ("mobilenetv3_small_100", "mobile CNN"),
    ("efficientnet_b0", "mobile CNN"),
    ("ghostnet_100", "mobile CNN"),
    ("resnet18", "classic CNN"),
    ("regnetx_002", "classic CNN"),
]
QUANT_CELLS = {"int-w8a8": ("int", "w8a8"), "int-w8a16": ("int", "w8a16"), "fp4-w4a6": ("fp4", "w4a6")}
CELLS = [*QUANT_CELLS, "tflite-fp32"]
QNN_CELL = "qnn-w8a16"
QNN_PARITY_IMAGES = 4   # each image runs the HTP emulator: slow
# Causes of the failures that stay, measured after the run (the one-line reason says what, this says why)
CAUSES = {
    ("pvt_v2_b0", "int-w8a8"): "one flipped image, margin 4.6× the typical logit noise (just outside the 4× "
    "near-tie band); torch's own float64 run is as far from torch (39.4 dB) as onnxruntime (39.4 dB) and keeps it: "
    "a near-tie the band misses, not a graph error",
    ("efficientvit_m0", "fp4-w4a6"): "most images come out bit-exact (median per-image noise 2e-12), so the "
    "near-tie band collapses; the flipped image differs by one late activation-rounding step (5e-7 on logits "
    "of ~1e-5), as 6 of 32 images do between torch in float32 and in float64",
    ("deit_tiny_patch16_224", QNN_CELL): "the QDQ graph agrees with the torch reference on onnxruntime's CPU EP "
    "(53 dB), and HTP with the CPU EP on every block output (34–45 dB; the class-token row 27–42 dB); the final "
    "LayerNorm, decomposed by the qnn-htp rewrite, drops the class-token row the head reads to 16 dB on HTP at its "
    "Div (the whole normed tensor stays at 32 dB): HTP's 16-bit Div/normalisation arithmetic, not an encoding "
    "error; not yet fixed",
    ("mobileone_s0", QNN_CELL): "random-init MobileOne's activations grow to ~1e15 (its logits too, see the "
    "tflite-fp32 note); not investigated further — likely beyond the range of HTP's fp16 internals",
    ("efficientvit_b0", QNN_CELL): "HTP refuses the Slice nodes that split q/k/v in EfficientViT's "
    "linear-attention context module (not rewritten by the qnn-htp target yet)",
}
for _arch in ("swin_tiny_patch4_window7_224", "pvt_v2_b0", "mobilevit_xxs", "coat_lite_tiny", "efficientvit_m0", "tiny_vit_5m_224",
              "edgenext_xx_small"):
    CAUSES[(_arch, QNN_CELL)] = ("the qnn-htp rewrite does not yet bring this attention (head split / window "
                                 "partition / positional encoding) to rank ≤ 4")
_RUNNING: set = set()   # steps in flight, killed when the benchmark is interrupted


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), COLUMNS="200",
               TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    env.pop("EDGEVIT_DEBUG", None)
    return env


def _reason(text: str) -> str:
    """The CLI's one-line `error:` message (the last one), else the last non-empty line of the output."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    errors = [l[len("error:"):].strip() for l in lines if l.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:400]


def step(name: str, args: list[str], timeout: float) -> dict:
    """Run `python -m edgevit.cli ARGS`; {step, ok, seconds, reason?, output}."""
    t0 = time.perf_counter()
    with subprocess.Popen([sys.executable, "-m", "edgevit.cli", *args], cwd=ROOT, env=_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as p:
        _RUNNING.add(p)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            return {"step": name, "ok": False, "seconds": round(time.perf_counter() - t0, 1), "exit": None,
                    "reason": f"{name}: timed out after {timeout:.0f} s", "output": (out or "")[-2000:]}
        finally:
            _RUNNING.discard(p)
        rc = p.returncode
    r = {"step": name, "ok": rc == 0, "seconds": round(time.perf_counter() - t0, 1), "exit": rc, "output": out[-2000:]}
    if rc != 0:
        r["reason"] = f"{name}: {_reason(out)}"
    return r


def run_cell(arch: str, cell: str, work: Path, timeout: float) -> dict:
    model = f"timm:{arch}"
    steps: list[dict] = []

    def go(name, args) -> bool:
        steps.append(step(name, args, timeout))
        return steps[-1]["ok"]

    if cell in QUANT_CELLS:
        fmt, bits = QUANT_CELLS[cell]
        q, art = work / f"{arch}-{cell}-q", work / f"{arch}-{cell}-onnx"
        _ = (go("quantize", ["quantize", model, "--fmt", fmt, "--bits", bits, "--calib", "photos:16",
                             "--eval-data", "photos:16", "--out", str(q), "--force"])
             and go("export", ["export", str(q), "--runtime", "onnx", "--parity-data", "photos:32", "--out", str(art),
                               "--overwrite"])
             and go("check-parity", ["check-parity", str(art), "--data", "photos:32"]))
    elif cell == "tflite-fp32":
        art = work / f"{arch}-tflite"
        go("export", ["export", model, "--runtime", "tflite", "--parity-data", "photos:16", "--out", str(art),
                      "--overwrite"])
    elif cell == QNN_CELL:
        art = work / f"{arch}-qnn"
        if go("export", ["export", model, "--runtime", "qnn", "--precision", "w8a16", "--soc", "SM8650",
                         "--calib-data", "photos:16", "--parity-data", "photos:16", "--parity-images", str(QNN_PARITY_IMAGES),
                         "--out", str(art), "--overwrite"]):
            try:
                manifest = json.loads((art / "manifest.json").read_text())
                steps[-1]["placement"] = _find(manifest, "placement")
                pm = manifest["parity"]["metrics"]
                steps[-1]["parity"] = {k: pm.get(k) for k in ("n", "top1_agreement", "sqnr_db")}
            except (OSError, ValueError):
                pass
    else:
        raise ValueError(cell)
    ok = all(s["ok"] for s in steps)
    row = {"ok": ok, "seconds": round(sum(s["seconds"] for s in steps), 1),
           "steps": {s["step"]: s["seconds"] for s in steps}}
    if not ok:
        row["reason"] = next(s["reason"] for s in steps if not s["ok"])
    placement = next((s["placement"] for s in steps if s.get("placement")), None)
    if placement:
        row["placement"] = placement
    qnn_parity = next((s["parity"] for s in steps if s.get("parity")), None)
    if qnn_parity:
        row["parity"] = qnn_parity
    return row


def _find(d, key):
    if isinstance(d, dict):
        if key in d:
            return d[key]
        for v in d.values():
            r = _find(v, key)
            if r is not None:
                return r
    return None


def run_arch(arch: str, cells: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"cov-{arch}-") as tmp:
        out = {}
        for cell in cells:
            out[cell] = run_cell(arch, cell, Path(tmp), timeout)
            status = "pass" if out[cell]["ok"] else f"FAIL ({out[cell]['reason']})"
            print(f"{arch:32s} {cell:12s} {out[cell]['seconds']:7.1f} s  {status}", flush=True)
        return out


def params_of(arch: str) -> float | None:
    code = ("import sys; from edgevit.models.timm_models import import_timm; t = import_timm(); "
            f"m = t.create_model({arch!r}, pretrained=False); "
            "print(sum(p.numel() for p in m.parameters()), tuple(m.pretrained_cfg['input_size']))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), text=True, capture_output=True, timeout=300)
    try:
        n, shape = p.stdout.strip().splitlines()[-1].split(" ", 1)
        return {"params_m": round(int(n) / 1e6, 2), "input": shape}
    except (ValueError, IndexError):
        return {"params_m": None, "input": None}


def render_md(data: dict) -> str:
    cells = [c for c in [*CELLS, QNN_CELL] if any(c in r["cells"] for r in data["archs"].values())]
    passed = sum(r["cells"][c]["ok"] for r in data["archs"].values() for c in cells if c in r["cells"])
    total = sum(c in r["cells"] for r in data["archs"].values() for c in cells)
    if cells == [QNN_CELL]:
        return render_qnn_md(data)
    lines = ["## timm coverage: quantize → export → check-parity", "",
             f"**{passed} / {total} cells pass ({100 * passed / max(total, 1):.0f} %)** over {len(data['archs'])} timm "
             "architectures (random init, `pretrained=False`), calibrated and parity-checked on `photos`. "
             "A quantised cell is `edgevit quantize` → `export --runtime onnx` → `check-parity`; `tflite-fp32` is "
             "`export --runtime tflite` of the float model. Times are the cell's wall seconds on "
             f"{data['machine']}, one thread per step.", "",
             "| architecture | kind | params | " + " | ".join(cells) + " |",
             "|---|---|---|" + "---|" * len(cells)]
    reasons: list[str] = []
    for arch, r in data["archs"].items():
        row = [f"`{arch}`", r.get("kind", ""), f"{r['params_m']} M" if r.get("params_m") else "-"]
        for c in cells:
            cell = r["cells"].get(c)
            if cell is None:
                row.append("")
            elif cell["ok"]:
                extra = ""
                if cell.get("placement"):
                    pl = cell["placement"]
                    extra = f", HTP {pl.get('nodes_on_htp')} / refused {pl.get('refused')}"
                if cell.get("parity"):
                    extra += f", {cell['parity']['sqnr_db']} dB"
                row.append(f"pass ({cell['seconds']:.0f} s{extra})")
            else:
                cause = CAUSES.get((arch, c))
                reasons.append(f"{arch} {c}: {cell['reason']}" + (f" — **cause**: {cause}" if cause else ""))
                row.append(f"**FAIL** [{len(reasons)}]")
        lines.append("| " + " | ".join(row) + " |")
    if reasons:
        lines += ["", "Failures:", ""] + [f"{i}. {r}" for i, r in enumerate(reasons, 1)]
    lines += ["", "Random-init backbones have near-uniform logits (top-1 margins of a few hundredths): float op-order "
              "differences between torch and onnxruntime (LayerNorm, GELU, attention) move values across an activation "
              "rounding boundary and flip near-ties. The parity bar therefore judges top-1 agreement on the images that "
              "are not near-ties (torch margin above 4× the typical logit noise, runtimes/parity.py) and SQNR on all; "
              "a failure above names how many images were excluded, and its measured cause. The SQNR bar of a "
              "quantised graph follows the torch model's own float32-vs-float64 noise where that is larger "
              "(runtimes.parity.with_reference_noise); the FP32 max-abs bar is 1e-4 or 1e-5 of the largest logit "
              "(random-init MobileOne's logits are ~1e15)."]
    lines += ["", f"Regenerate: `{data['command']}`"]
    return "\n".join(lines) + "\n"


def render_qnn_md(data: dict) -> str:
    """The QNN sibling table: per architecture, nodes the HTP compiler took / refused and emulator parity."""
    rows = [(a, r, r["cells"][QNN_CELL]) for a, r in data["archs"].items() if QNN_CELL in r["cells"]]
    passed = sum(c["ok"] for _, _, c in rows)
    lines = ["## timm coverage on QNN HTP (w8a16, SM8650, emulated)", "",
             f"**{passed} / {len(rows)} architectures pass** `edgevit export timm:ARCH --runtime qnn --precision w8a16 "
             "--soc SM8650` (the `qnn-htp` rewrite first, edgevit's W8A16 quantisation carried into the QDQ graph, "
             "context binary compiled, parity of the HTP emulator against the torch reference on "
             f"{data.get('qnn_parity_images', 4)} photos). Times are wall seconds on {data['machine']}.", "",
             "| architecture | kind | params | result | s | nodes on HTP | refused | parity top-1 / SQNR |",
             "|---|---|---|---|---|---|---|---|"]
    reasons = []
    for arch, r, c in rows:
        pl, pa = c.get("placement") or {}, c.get("parity") or {}
        if c["ok"]:
            res = "pass"
        else:
            cause = CAUSES.get((arch, QNN_CELL))
            reasons.append(f"{arch}: {c['reason']}" + (f" — **cause**: {cause}" if cause else ""))
            res = f"**FAIL** [{len(reasons)}]"
        par = f"{100 * pa['top1_agreement']:.0f} % / {pa['sqnr_db']} dB" if pa else "-"
        lines.append(f"| `{arch}` | {r.get('kind', '')} | {r.get('params_m') or '-'} M | {res} | {c['seconds']:.0f} | "
                     f"{pl.get('nodes_on_htp', '-')} | {pl.get('refused', '-')} | {par} |")
    if reasons:
        lines += ["", "Failures:", ""] + [f"{i}. {r}" for i, r in enumerate(reasons, 1)]
    lines += ["", f"Regenerate: `{data['command']}`"]
    return "\n".join(lines) + "\n"


def _terminate(signum, frame):
    for p in list(_RUNNING):   # steps run in worker threads: end them here, then unwind
        p.kill()
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=[a for a, _ in ARCHS], help="timm names (default: the list above)")
    ap.add_argument("--cells", nargs="+", default=None, choices=[*CELLS, QNN_CELL],
                    help=f"default: {' '.join(CELLS)} (+ {QNN_CELL} with --qnn)")
    ap.add_argument("--qnn", action="store_true", help=f"also the {QNN_CELL} cell (slow: the HTP emulator)")
    ap.add_argument("--workers", type=int, default=1, help="architectures run side by side (each step 1 thread)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per step")
    ap.add_argument("--out", default=str(RESULTS / "timm_coverage.json"))
    ap.add_argument("--fresh", action="store_true", help="do not merge into the existing results file")
    args = ap.parse_args()
    cells = args.cells or (CELLS + ([QNN_CELL] if args.qnn else []))
    out = Path(args.out)
    kinds = dict(ARCHS)
    data = {"archs": {}}
    if out.exists() and not args.fresh:
        data = json.loads(out.read_text())
    sys.path.insert(0, str(ROOT))
    from runtimes import machine
    data.update({"machine": machine.summary(), "python": platform.python_version(),
                 "command": "OMP_NUM_THREADS=1 python benchmarks/timm_coverage.py" + (
                     f" --cells {QNN_CELL} --out benchmarks/results/timm_coverage_qnn.json" if cells == [QNN_CELL]
                     else " --qnn" if args.qnn else "")})
    if QNN_CELL in cells:
        data["qnn_parity_images"] = QNN_PARITY_IMAGES
    t0 = time.perf_counter()

    def one(arch):
        info = params_of(arch)
        return arch, info, run_arch(arch, cells, args.timeout)

    pool = ThreadPoolExecutor(max_workers=max(1, args.workers))
    try:
        results = pool.map(one, args.archs) if args.workers > 1 else map(one, args.archs)
        for arch, info, result in results:
            row = data["archs"].setdefault(arch, {"cells": {}})
            row.update({"kind": kinds.get(arch, row.get("kind", "")), **info})
            row["cells"].update(result)
            # keep the table in the order of ARCHS, extra architectures after
            order = [a for a, _ in ARCHS if a in data["archs"]] + [a for a in data["archs"] if a not in kinds]
            data["archs"] = {a: data["archs"][a] for a in order}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(data, indent=2) + "\n")
            out.with_suffix(".md").write_text(render_md(data))
    except KeyboardInterrupt:
        for p in list(_RUNNING):
            p.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        print("interrupted; results so far are in", out, file=sys.stderr)
        return 130
    pool.shutdown()
    print(f"done in {time.perf_counter() - t0:.0f} s; wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
