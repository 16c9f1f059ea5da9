"""Rewrite the bundled models (and optionally timm:deit_tiny_patch16_224) for a target and record the
issue-8 numbers: FP32 equivalence, violations before/after (rules + QNN compiler), encoder SQNR/relRMS
under W8A16/W8A8/W4A16 before and after rewrite, and the dominant layers.

    .venv/bin/python benchmarks/rewrite_report.py --models vit-tiny vit-small mobilenet-mini --target qnn-htp
writes benchmarks/results/rewrite_<target>.json and prints one summary line per model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["vit-tiny", "vit-small", "mobilenet-mini"])
    ap.add_argument("--target", default="qnn-htp")
    ap.add_argument("--samples", type=int, default=256, help="test images for equivalence")
    ap.add_argument("--report-samples", type=int, default=128, help="test images for the SQNR report")
    ap.add_argument("--timm", action="store_true", help="also timm:deit_tiny_patch16_224 (random weights, slow)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from edgevit.data import Preprocess, load_data
    from edgevit.models.registry import load_model
    from edgevit.rewrite import load_target, rewrite_model
    from edgevit.rewrite.checker import check_model, total_violations
    from edgevit.rewrite.robustness import robustness, summary_line
    target = load_target(args.target)
    jobs = [(name, *load_model(name)) for name in args.models]
    if args.timm:
        from edgevit.models.timm_models import import_timm
        torch.manual_seed(0)
        m = import_timm().create_model("deit_tiny_patch16_224", pretrained=False).eval()
        from edgevit.models.registry import IMAGENET_PREPROCESS, ModelMeta
        jobs.append(("timm:deit_tiny_patch16_224", m, ModelMeta("deit_tiny", IMAGENET_PREPROCESS, (), "timm")))
    results = {}
    for name, model, meta in jobs:
        big = meta.preprocess.size > 64
        pre = meta.preprocess if not big else Preprocess(224, 3, meta.preprocess.mean, meta.preprocess.std)
        x, y = load_data(f"fashion-mnist:{4 if big else args.samples}", pre, split="test")
        cal, _ = load_data(f"fashion-mnist:{4 if big else 128}", pre, split="train")
        before = check_model(model, meta.input_shape, target, cal[:4].numpy())
        new, rep = rewrite_model(model, target, x, meta.input_shape, y=y)
        after = check_model(new, meta.input_shape, target, cal[:4].numpy())
        ev = x[: (2 if big else args.report_samples)]
        rb = {"before": robustness(model, cal, ev, top_k=3), "after": robustness(new, cal, ev, top_k=3)}
        results[name] = {"max_rel_err": rep["max_rel_err"], "passes": rep["passes"],
                         "violations_before": total_violations(before), "violations_after": total_violations(after),
                         "qnn_after": {k: v for k, v in after.get("qnn", {}).items() if k != "host_boundary"},
                         "robustness": {k: {p: {f: r[f] for f in ("encoder_rel_rms", "encoder_sqnr_db", "logits_sqnr_db",
                                                                  "top1_agreement", "dominant")}
                                            for p, r in v["precisions"].items()} for k, v in rb.items()}}
        print(f"{name}: max rel err {rep['max_rel_err']:.1e}, violations {results[name]['violations_before']} → "
              f"{results[name]['violations_after']}")
        for k, v in rb.items():
            print("  " + summary_line(k, v))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rewrite_{args.target}.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
