"""RTN PTQ on the bundled models: top-1 vs FP32, packed size, quantisation wall time.

Writes benchmarks/results/quant_rtn.json. Run alone on an idle machine (timings):

    OMP_NUM_THREADS=1 python benchmarks/quant_rtn.py [--models vit-small ...] [--eval-limit N] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import quant
from edgevit.data import calibration_tensor, load_data
from edgevit.models import bundled
from edgevit.models.registry import load_model
from edgevit.models.train import evaluate

CONFIGS = [("int", "w8a8"), ("int", "w4a8"), ("fp4", "w4a6"), ("fp4", "w4a8"), ("mxfp4", "w4a8")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(bundled.BUNDLED))
    ap.add_argument("--calib", default="fashion-mnist:256")
    ap.add_argument("--eval-limit", type=int, default=None, help="seeded test subset (default: all 10,000)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quant_rtn.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    test_spec = "fashion-mnist" + (f":{args.eval_limit}" if args.eval_limit else "")
    results = []
    for name in args.models:
        model, meta = load_model(name)
        x, y = load_data(test_spec, meta.preprocess, split="test", seed=args.seed)
        calib = calibration_tensor(args.calib, meta.preprocess, seed=args.seed)
        fp32_file = bundled.checkpoint_path(name).stat().st_size
        float_top1 = evaluate(model, x, y)
        print(f"{name}: FP32 top-1 {float_top1:.2f}% ({len(y)} images), file {fp32_file} B")
        for fam, bits in CONFIGS:
            spec = quant.parse_spec(fam, bits)
            torch.manual_seed(args.seed)
            t0 = time.perf_counter()
            qmodel = quant.quantize_model(model, spec, calib)
            quant_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            top1 = evaluate(qmodel, x, y)
            eval_s = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as d:
                sizes = quant.save_quantized(qmodel, Path(d) / "ck")
            row = {"model": name, "fmt": fam, "bits": bits, "float_top1": float_top1, "quant_top1": top1,
                   "delta": top1 - float_top1, "packed_bytes": sizes["total_bytes"], "fp32_file_bytes": fp32_file,
                   "size_ratio": sizes["total_bytes"] / fp32_file, "overhead_vs_ideal": sizes["overhead_vs_ideal"],
                   "quantize_wall_s": quant_s, "eval_wall_s": eval_s, "images": len(y)}
            results.append(row)
            print(f"  {fam:6s} {bits}: top-1 {top1:.2f}% ({row['delta']:+.2f}), size {row['size_ratio']:.3f}x, "
                  f"quantise {quant_s:.1f}s, eval {eval_s:.1f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "quant_rtn", "calib": args.calib, "test": test_spec, "seed": args.seed,
              "threads": args.threads, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "results": results}
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out}")


def markdown(result: dict) -> str:
    """The README table: RTN top-1 change and packed size per model and precision."""
    lines = [f"Round-to-nearest PTQ (`benchmarks/quant_rtn.py`): top-1 on {result['test']} (seeded test subset), "
             f"calibration {result['calib']}; size = packed checkpoint / FP32 file.", "",
             "| model | FP32 top-1 | INT W8A8 | INT W4A8 | FP W4A6 | FP W4A8 | MXFP4 W4A8 |", "|---|---|---|---|---|---|---|"]
    by_model: dict[str, list] = {}
    for r in result["results"]:
        by_model.setdefault(r["model"], []).append(r)
    for model, rows in by_model.items():
        cells = [f"{r['quant_top1']:.2f} ({r['delta']:+.2f}), {r['size_ratio']:.3f}×" for r in rows]
        lines.append(f"| {model} | {rows[0]['float_top1']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
