"""Side-by-side PTQ: edgevit RTN / AdaRound / BRECQ vs onnxruntime's quantizer vs brevitas, one run.

Every quantiser sees the same calibration images and is scored on the same evaluation images:
- bundled vit-small and mobilenet-mini: calibration = Fashion-MNIST train subset (--calib), evaluation =
  a seeded subset of the Fashion-MNIST test set (--eval-limit), top-1 vs labels;
- mobilenetv2 (real ImageNet weights): the `photos` spec, 126 real photos (7 scenes × 18 views);
  calibration on the 63 even views and their mirror images (`photos+mirror`: 63 photos are too few for
  reconstruction, which over-fits them), evaluation on the 63 odd views: top-1 agreement with FP32, logit SQNR.
edgevit runs exactly what `edgevit quantize` runs (`edgevit.ptq.ptq`: default graph fixes
— BN folding, CLE over pairs and residual streams, bias correction on models with BN —, default
observers); the peers get the float model.
A peer that cannot express a precision gets a row with "n/a" and the reason.

    OMP_NUM_THREADS=1 python benchmarks/ptq_compare.py [--models vit-small mobilenet-mini mobilenetv2]
        [--eval-limit 2000] [--iters 400] [--mnv2-iters 400]   # writes benchmarks/results/ptq_compare.{json,md,png}

Models can run as separate processes (one core each) and be joined afterwards:

    python benchmarks/ptq_compare.py --models vit-small --out /tmp/pc-vit.json &
    python benchmarks/ptq_compare.py --models mobilenetv2 --out /tmp/pc-mnv2.json & wait
    python benchmarks/ptq_compare.py --combine /tmp/pc-vit.json /tmp/pc-mnv2.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import quant
from edgevit.ptq import load_sets, ptq
from edgevit.models.registry import load_model

PRECISIONS = [("int", "w8a8"), ("int", "w4a8"), ("int", "w4a6"), ("fp4", "w4a8"), ("fp4", "w4a6"), ("mxfp4", "w4a8")]
# which (method, precision) pairs run per model: BRECQ everywhere, AdaRound where the claims are
EDGEVIT_PLAN = {
    "vit-small": {"rtn": PRECISIONS, "adaround": [("int", "w4a8"), ("int", "w4a6"), ("fp4", "w4a6")], "brecq": PRECISIONS},
    "mobilenet-mini": {"rtn": PRECISIONS, "adaround": [("int", "w4a8")], "brecq": [("int", "w4a8"), ("int", "w4a6"), ("fp4", "w4a6")]},
    "mobilenetv2": {"rtn": PRECISIONS, "adaround": [("int", "w8a8"), ("int", "w4a8")],
                    "brecq": [("int", "w4a8"), ("fp4", "w4a8")]},
}
RESULTS = Path(__file__).parent / "results"


# -- data and scoring ---------------------------------------------------------------------------------
def data_for(name: str, meta, args):
    """(calibration spec, calibration images, eval images, eval labels or None, note)."""
    if name == "mobilenetv2":
        cal, x, _, _ = load_sets(args.mnv2_calib, "photos", None, meta, args.seed)
        views = "the even views and their mirror images" if args.mnv2_calib.endswith("+mirror") else "the even views"
        return args.mnv2_calib, cal, x, None, (f"real photos: calibrate on {len(cal)} images ({views}), evaluate top-1 "
                                               f"agreement with FP32 on the {len(x)} odd views (7 scenes)")
    cal, x, y, _ = load_sets(args.calib, "fashion-mnist", args.eval_limit, meta, args.seed)
    return args.calib, cal, x, y, f"Fashion-MNIST: calibrate on {args.calib} (train), evaluate on {len(x)} test images"


def logits(fn, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.as_tensor(fn(x[i:i + batch])) for i in range(0, len(x), batch)])


def score(out: torch.Tensor, ref: torch.Tensor, y) -> dict:
    s = {"agreement": 100.0 * (out.argmax(-1) == ref.argmax(-1)).double().mean().item(),
         "sqnr_db": quant.sqnr_db(ref, out)}
    if y is not None:
        s["top1"] = 100.0 * (out.argmax(-1) == y).double().mean().item()
    return s


def edgevit_size(qmodel) -> int:
    with tempfile.TemporaryDirectory() as d:
        return quant.save_quantized(qmodel, Path(d) / "ck")["total_bytes"]


# -- peers --------------------------------------------------------------------------------------------
def run_edgevit(model, meta, fam, bits, method, calib_spec, recon: dict, seed: int):
    """`edgevit quantize MODEL --fmt FAM --bits BITS --method METHOD` with the benchmark's reconstruction knobs.
    RTN gets none: they include the calibration batch size, and on MobileNetV2 W8A8 calibrating in batches of
    16 instead of 64 moves min-max ranges by float rounding alone — enough to flip 3 of 63 near-tie photos."""
    t0 = time.perf_counter()
    recipe = {"reconstruction": recon} if method != "rtn" else {}
    q, _, _, info = ptq(model, meta, {"family": fam, "bits": bits, "method": method, "calib": calib_spec,
                                      "seed": seed, "recipe": recipe})
    units = len((info["method_report"] or {}).get("units", []))
    return q, time.perf_counter() - t0, {"units": units} if method != "rtn" else {}


def ort_capability(fam, bits):
    if fam != "int":
        return "onnxruntime quantize_static has INT8/INT4/INT16 QDQ types (FP8 only via its float8 path); no FP4/FP6/MX"
    if bits == "w4a6":
        return "onnxruntime QDQ types are 4/8/16 bit: no 6-bit activations"
    return None


def run_ort(model, meta, fam, bits, calib, x, tmp: Path, calib_method: str):
    """onnxruntime.quantization.quantize_static: QDQ, per-channel weights, static activations."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from runtimes.onnx.export import export_onnx
    from runtimes.onnx.session import cpu_session
    fp32 = tmp / "fp32.onnx"
    if not fp32.exists():
        export_onnx(model, (1, *x.shape[1:]), fp32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1].numpy()} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    out = tmp / f"ort_{bits}_{calib_method}.onnx"
    wtype = QuantType.QInt4 if bits.startswith("w4") else QuantType.QInt8
    t0 = time.perf_counter()
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=wtype, activation_type=QuantType.QUInt8,
                    calibrate_method=getattr(CalibrationMethod, calib_method),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    secs = time.perf_counter() - t0
    sess = cpu_session(out)   # the same exact-int8 settings as edgevit's own artifacts
    fn = lambda b: sess.run(None, {"input": b.numpy()})[0]   # noqa: E731
    return fn, secs, out.stat().st_size


def brevitas_recipe(fam, bits):
    """The spec brevitas' core quantisers can express for a precision (per-channel FP weights,
    static per-tensor activations), or (None, reason)."""
    if fam == "mxfp4":
        return None, "brevitas core has MX weights but no MX/per-token activation quantiser for the A side"
    if fam == "int":
        return {}, None
    return {"weight_granularity": "channel", "act_granularity": "tensor"}, None


def run_brevitas(model, fam, bits, method, calib, recipe):
    from edgevit.backends import brevitas_backend as bb
    spec = quant.parse_spec(fam, bits, recipe)
    t0 = time.perf_counter()
    q, rep = bb.quantize(model, spec, calib, method=method, keep_brevitas=True)
    secs = time.perf_counter() - t0
    return rep.pop("brevitas_model"), q, secs


# -- main ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(EDGEVIT_PLAN))
    ap.add_argument("--calib", default="fashion-mnist:256")
    ap.add_argument("--eval-limit", type=int, default=2000)
    ap.add_argument("--iters", type=int, default=400,
                    help="reconstruction steps per unit (the CLI default)")
    ap.add_argument("--mnv2-iters", type=int, default=400,
                    help="steps per unit on MobileNetV2 (~10 min per AdaRound run on one core at 400)")
    ap.add_argument("--mnv2-calib", default="photos+mirror",
                    help="MobileNetV2 calibration spec for every tool (default: the 63 calibration photos and their "
                         "mirror images; `photos` = the 63 alone)")
    ap.add_argument("--precisions", nargs="+", metavar="FMT:BITS",
                    help="only these precisions (e.g. int:w4a8 int:w8a8); default: all six")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="join earlier runs' results into --out; run nothing")
    ap.add_argument("--out", default=str(RESULTS / "ptq_compare.json"))
    args = ap.parse_args()
    keep = None if not args.precisions else {tuple(p.split(":", 1)) for p in args.precisions}
    precisions = [p for p in PRECISIONS if keep is None or p in keep]
    if keep is not None and len(precisions) != len(keep):
        ap.error(f"--precisions: choose from {', '.join(f'{f}:{b}' for f, b in PRECISIONS)}")
    if args.combine:
        parts = [json.loads(Path(f).read_text()) for f in args.combine]
        info = {**parts[0], "data": {m: n for p in parts for m, n in p["data"].items()},
                "total_s": sum(p["total_s"] for p in parts), "loadavg_end": [p["loadavg_end"] for p in parts],
                "iters_mobilenetv2": next((p["iters_mobilenetv2"] for p in parts if "mobilenetv2" in p["data"]),
                                          parts[0]["iters_mobilenetv2"])}
        rows = {(r["model"], r["tool"], r["method"], r["fmt"], r["bits"]): r for p in parts for r in p["results"]}
        write(Path(args.out), list(rows.values()), {k: v for k, v in info.items() if k != "results"})
        return
    torch.set_num_threads(1)
    import onnxruntime
    onnxruntime.set_default_logger_severity(3)
    rows, notes, t_start = [], {}, time.perf_counter()

    def add(model, tool, method, fam, bits, s=None, secs=None, size=None, na=None, extra=None):
        row = {"model": model, "tool": tool, "method": method, "fmt": fam, "bits": bits,
               **(s or {}), "quantize_s": secs, "packed_bytes": size, "na": na, **(extra or {})}
        rows.append(row)
        shown = "n/a: " + na if na else " ".join(f"{k}={v:.2f}" for k, v in (s or {}).items())
        print(f"  {tool:9s} {method:22s} {fam:5s} {bits}: {shown}" + (f"  ({secs:.0f}s)" if secs else ""), flush=True)

    for name in args.models:
        model, meta = load_model(name)
        model.eval()
        calib_spec, calib, x, y, note = data_for(name, meta, args)
        notes[name] = note
        ref = logits(model, x)
        fp = score(ref, ref, y)
        print(f"{name}: {note}; FP32 {fp}", flush=True)
        add(name, "fp32", "-", "fp32", "w32a32", fp, 0.0, sum(p.numel() * 4 for p in model.parameters()))
        recon = {"iters": args.mnv2_iters if name == "mobilenetv2" else args.iters,
                 "batch_size": 8 if name == "mobilenetv2" else 32,
                 "capture_batch": 16 if name == "mobilenetv2" else 64}
        for method, precs in EDGEVIT_PLAN[name].items():
            for fam, bits in (p for p in precs if p in precisions):
                torch.manual_seed(args.seed)
                q, secs, extra = run_edgevit(model, meta, fam, bits, method, calib_spec, recon, args.seed)
                add(name, "edgevit", method, fam, bits, score(logits(q, x), ref, y), secs, edgevit_size(q), extra=extra)
        if args.no_peers:
            continue
        with tempfile.TemporaryDirectory() as d:
            for fam, bits in precisions:
                why = ort_capability(fam, bits)
                if why:
                    add(name, "onnxruntime", "quantize_static", fam, bits, na=why)
                    continue
                for cm in ("MinMax", "Percentile"):
                    try:
                        fn, secs, size = run_ort(model, meta, fam, bits, calib, x, Path(d), cm)
                        add(name, "onnxruntime", f"quantize_static/{cm}", fam, bits, score(logits(fn, x), ref, y), secs, size)
                    except Exception as e:   # a peer failing is a result, not a crash
                        add(name, "onnxruntime", f"quantize_static/{cm}", fam, bits, na=f"{type(e).__name__}: {str(e)[:160]}")
        add(name, "onnxruntime", "MatMul4BitsQuantizer", "int", "w4a8",
            na="int4 weight-only for MatMul (activations stay float): not a W4A8 scheme; convs untouched")
        for fam, bits in precisions:
            recipe, why = brevitas_recipe(fam, bits)
            if why:
                add(name, "brevitas", "calib+bias-corr", fam, bits, na=why)
                continue
            methods = ["rtn"] + (["gptq"] if bits == "w4a8" and fam == "int" else [])
            for bm in methods:
                label = {"rtn": "calib+bias-corr", "gptq": "calib+GPTQ+bias-corr"}[bm]
                try:
                    bmodel, q, secs = run_brevitas(model, fam, bits, bm, calib, recipe)
                    scheme = "per-channel W, static per-tensor A" if recipe else "per-channel W, static A"
                    add(name, "brevitas", label, fam, bits, score(logits(bmodel, x), ref, y), secs, edgevit_size(q),
                        extra={"scheme": scheme, "as_edgevit_checkpoint": score(logits(q, x), ref, y)})
                except Exception as e:
                    add(name, "brevitas", label, fam, bits, na=f"{type(e).__name__}: {str(e)[:160]}")

    meta_info = {"benchmark": "ptq_compare", "data": notes, "seed": args.seed, "iters_per_unit": args.iters,
                 "iters_mobilenetv2": args.mnv2_iters, "threads": 1, "torch": torch.__version__, "machine": platform.machine(),
                 "loadavg_end": os.getloadavg(), "total_s": time.perf_counter() - t_start,
                 "note": "2-core machine shared with other jobs: wall times are inflated, accuracy/size are not"}
    write(Path(args.out), rows, meta_info)


def write(out: Path, rows: list[dict], meta_info: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta_info, "results": rows}, indent=2, default=float))
    out.with_suffix(".md").write_text(markdown(rows, meta_info))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} (+ .md, .png); {meta_info['total_s']:.0f} s of benchmark time")


def _cell(r) -> str:
    if r is None:
        return "–"
    t1 = f"top-1 {r['top1']:.2f} · " if "top1" in r else ""
    return f"{r['method']}: {t1}agree {r['agreement']:.1f} · **{r['sqnr_db']:.1f} dB**"


def summary(rows) -> list[str]:
    """Per model and precision, each tool's best row by logit SQNR — the stable measure: on 2000 test
    images a top-1 difference under ~0.6 points is within noise, and on MobileNetV2's 63 photos one image
    is 1.6 points of agreement."""
    lines = ["| model | precision | edgevit | onnxruntime | brevitas |", "|---|---|---|---|---|"]
    for m in dict.fromkeys(r["model"] for r in rows):
        for fam, bits in PRECISIONS:
            best = {}
            for tool in ("edgevit", "onnxruntime", "brevitas"):
                cands = [r for r in rows if (r["model"], r["tool"], r["fmt"], r["bits"]) == (m, tool, fam, bits)
                         and not r["na"]]
                best[tool] = max(cands, key=lambda r: r["sqnr_db"], default=None)
            if best["edgevit"] is not None:
                lines.append(f"| {m} | {fam} {bits} | " + " | ".join(_cell(best[t]) for t in best) + " |")
    return lines


def markdown(rows, info) -> str:
    lines = ["# PTQ side by side", "", *(f"- {m}: {n}" for m, n in info["data"].items()),
             f"- reconstruction: {info['iters_per_unit']} steps per unit (MobileNetV2: {info['iters_mobilenetv2']}, batch 8); "
             f"1 torch thread; {info['note']}", "",
             "Best of each tool per precision (by logit SQNR against FP32; – = the tool cannot express it):", "",
             *summary(rows), "", "<details><summary>Every row</summary>", "",
             "| model | tool | method | fmt | bits | top-1 % | agree % | SQNR dB | size | time s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["na"]:
            lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | {r['fmt']} | {r['bits']} | n/a | n/a | n/a | "
                         f"n/a | {r['na']} |")
            continue
        t1 = f"{r['top1']:.2f}" if "top1" in r else "-"
        sq = "inf" if r["sqnr_db"] == float("inf") else f"{r['sqnr_db']:.1f}"
        lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | {r['fmt']} | {r['bits']} | {t1} | "
                     f"{r['agreement']:.1f} | {sq} | {r['packed_bytes'] / 1e3:.0f} kB | {r['quantize_s']:.1f} |")
    return "\n".join([*lines, "", "</details>"]) + "\n"


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 7), squeeze=False)
    for ax, m in zip(axes[0], models):
        sub = [r for r in rows if r["model"] == m and not r["na"] and r["tool"] != "fp32"]
        key = "top1" if any("top1" in r for r in sub) else "agreement"
        labels = [f"{r['fmt']} {r['bits']} · {r['tool']} {r['method']}" for r in sub]
        colors = {"edgevit": "tab:blue", "onnxruntime": "tab:orange", "brevitas": "tab:green"}
        ax.barh(range(len(sub)), [r[key] for r in sub], color=[colors[r["tool"]] for r in sub])
        ax.set_yticks(range(len(sub)), labels, fontsize=6)
        fp = next(r for r in rows if r["model"] == m and r["tool"] == "fp32")
        ax.axvline(fp[key], color="k", ls="--", lw=0.8)
        lo = min(r[key] for r in sub)
        ax.set_xlim(max(0, lo - 2), 100 if key == "agreement" else fp[key] + 2)
        ax.set_title(f"{m}: {'top-1 %' if key == 'top1' else 'top-1 agreement with FP32 %'}")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
