"""Issue-8 numbers, measured in one run: rewrite each model for a target and record FP32 equivalence,
violations before/after (rules + the QNN HTP compiler when installed), encoder SQNR/relRMS under
W8A16/W8A8/W4A16 before and after rewrite (quant/ INT PTQ, see edgevit/rewrite/robustness.py) and the
dominant layers; with --student, the conv student from `edgevit rewrite MODEL --distill conv` too.

    .venv/bin/python benchmarks/rewrite_report.py --models vit-small vit-base --student out/vit-small-student
    .venv/bin/python benchmarks/rewrite_report.py --models --student out/s2 --append   # add to earlier results
writes benchmarks/results/rewrite_report.json, .md and .png (per-layer SQNR bars after rewrite).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

FIELDS = ("encoder_rel_rms", "encoder_sqnr_db", "logits_sqnr_db", "top1_agreement", "dominant")


def _robust_summary(rep: dict) -> dict:
    return {p: {f: r[f] for f in FIELDS} for p, r in rep["precisions"].items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["vit-small", "vit-base"])
    ap.add_argument("--student", default=None, help="output dir of `edgevit rewrite MODEL --distill conv`")
    ap.add_argument("--variants", nargs="*", default=[], metavar="NAME=CKPT",
                    help="more students: work-dir last.pt checkpoints (e.g. other recipes), same measurements")
    ap.add_argument("--target", default="qnn-htp")
    ap.add_argument("--samples", type=int, default=256, help="test images for equivalence")
    ap.add_argument("--report-samples", type=int, default=128, help="test images for the SQNR report")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--append", action="store_true", help="keep the models already in OUT/rewrite_report.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from edgevit.data import load_data
    from edgevit.models.registry import ModelMeta, load_model
    from edgevit.rewrite import load_target, rewrite_model
    from edgevit.rewrite.checker import check_model, total_violations
    from edgevit.rewrite.robustness import plot, robustness, summary_line
    target = load_target(args.target)
    results, plots, runs = {}, {}, []
    previous = Path(args.out) / "rewrite_report.json"
    if args.append and previous.exists():
        old = json.loads(previous.read_text())
        results, runs = old["results"], old.get("runs", [])
        plots = {k: v.pop("plot") for k, v in results.items() if "plot" in v}
    t_start, load_start = time.time(), os.getloadavg()
    for name in args.models:
        t0 = time.time()
        model, meta = load_model(name)
        x, y = load_data(f"fashion-mnist:{args.samples}", meta.preprocess, split="test")
        cal, _ = load_data("fashion-mnist:128", meta.preprocess, split="train")
        before = check_model(model, meta.input_shape, target, cal[:8].numpy())
        new, rep = rewrite_model(model, target, x, meta.input_shape, y=y)
        after = check_model(new, meta.input_shape, target, cal[:8].numpy())
        ev = x[:args.report_samples]
        rb = {"before": robustness(model, cal, ev), "after": robustness(new, cal, ev)}
        plots[name] = rb["after"]
        results[name] = {"max_rel_err": rep["max_rel_err"], "passes": rep["passes"],
                         "violations_before": total_violations(before), "violations_after": total_violations(after),
                         "qnn_after": {k: v for k, v in after.get("qnn", {}).items() if k != "host_boundary"},
                         "robustness": {k: _robust_summary(v) for k, v in rb.items()}, "wall_s": round(time.time() - t0, 1)}
        print(f"{name}: max rel err {rep['max_rel_err']:.1e}, violations {results[name]['violations_before']} → "
              f"{results[name]['violations_after']}")
        for k, v in rb.items():
            print("  " + summary_line(k, v))
    if args.student:
        sdir = Path(args.student)
        dist = json.loads((sdir / "distill.json").read_text())
        meta = ModelMeta.from_dict(json.loads((sdir / "meta.json").read_text()))
        student = torch.load(sdir / "model.pt", weights_only=False).eval()     # our own artifact
        x, _ = load_data(f"fashion-mnist:{args.samples}", meta.preprocess, split="test")   # the ViTs' images
        cal, _ = load_data("fashion-mnist:128", meta.preprocess, split="train")
        check = check_model(student, meta.input_shape, target, cal[:8].numpy())
        rb = robustness(student, cal, x[:args.report_samples])
        plots["conv-student"] = rb
        results["conv-student"] = {
            "teacher": dist["teacher_model"], "violations": total_violations(check),
            "qnn": {k: v for k, v in check.get("qnn", {}).items() if k != "host_boundary"},
            "robustness": _robust_summary(rb),
            "distill_comparison": {k: dist[k] for k in ("teacher", "student", "summary", "latency")},
            "distill_record": dist["distill"]}
        print("  " + summary_line("conv student", rb))
    for spec in args.variants:
        name, _, path = spec.partition("=")
        results[f"variant:{name}"] = _variant(Path(path), target)
        print(f"  variant {name}: {results[f'variant:{name}']['summary']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"target": args.target, "threads": args.threads, "torch": torch.__version__,
           "wall_s": round(time.time() - t_start, 1), "loadavg_start": [round(v, 2) for v in load_start],
           "loadavg_end": [round(v, 2) for v in os.getloadavg()],
           "note": "2-core machine shared with other jobs; accuracy/SQNR are unaffected, latencies are interleaved ratios"}
    env["models"] = [*args.models, *(["conv-student"] if args.student else [])]
    runs.append(env)
    (out / "rewrite_report.md").write_text(_markdown(results, runs))
    plot({f"{k} (rewritten)": v for k, v in plots.items()}, out / "rewrite_report.png")
    stored = {k: {**v, "plot": plots[k]} if k in plots else v for k, v in results.items()}
    (out / "rewrite_report.json").write_text(json.dumps({"runs": runs, "results": stored}, indent=1, default=float))
    print(f"wrote {out / 'rewrite_report.json'}, .md, .png")


def _variant(ckpt: Path, target) -> dict:
    """A student checkpoint (work_dir/last.pt): rewritten like the CLI does, accuracy on the full test
    split, encoder error under each precision — the same calibration and evaluation images as above."""
    from edgevit.data import load_data
    from edgevit.models.bundled import FASHION_MNIST_PREPROCESS as pre
    from edgevit.models.train import evaluate
    from edgevit.rewrite import rewrite_model
    from edgevit.rewrite.robustness import robustness
    from edgevit.rewrite.student import ConvStudent, StudentConfig
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    student = ConvStudent(StudentConfig.from_dict(state["config"]))
    student.load_state_dict(state["student"])
    student.eval()
    x, y = load_data("fashion-mnist", pre, split="test")
    cal, _ = load_data("fashion-mnist:128", pre, split="train")
    ev, _ = load_data("fashion-mnist:256", pre, split="test")        # the ViTs' equivalence/report images
    npu, rep = rewrite_model(student, target, ev, (1, 1, 28, 28))
    rb = robustness(npu, cal, ev[:128])
    r = state["recipe"]
    return {"checkpoint": str(ckpt), "recipe": r, "history": state["history"], "robustness": _robust_summary(rb),
            "summary": {"test_top1": evaluate(student, x, y), "robust_epochs_done": max(0, state["epoch"] - r["epochs"]),
                        "robust_weight": r.get("robust_weight", 0.0),
                        **{f"{p}_encoder_rel_rms_pct": round(100 * v["encoder_rel_rms"], 3)
                           for p, v in rb["precisions"].items()}}}


def _markdown(results: dict, runs: list[dict]) -> str:
    lines = [f"# NPU rewrite report ({runs[-1]['target']})", "",
             "| model | FP32 max rel err | violations before → after | W8A16 enc SQNR | W8A8 enc SQNR / relRMS | "
             "W4A16 enc SQNR | dominant (W8A8) |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        if name.startswith("variant:"):
            continue
        if name == "conv-student":
            rob, viol, err = r["robustness"], f"– → {r['violations']}", "exact (BN fold)"
        else:
            rob, viol, err = r["robustness"]["after"], f"{r['violations_before']} → {r['violations_after']}", \
                f"{r['max_rel_err']:.1e}"
        w8a8 = rob["w8a8"]
        lines.append(f"| {name} | {err} | {viol} | {rob['w8a16']['encoder_sqnr_db']:.1f} dB | "
                     f"{w8a8['encoder_sqnr_db']:.1f} dB / {100 * w8a8['encoder_rel_rms']:.2f} % | "
                     f"{rob['w4a16']['encoder_sqnr_db']:.1f} dB | "
                     f"{', '.join(d['layer'] for d in w8a8['dominant'])} |")
    if "conv-student" in results:
        c = results["conv-student"]["distill_comparison"]
        t, s, sm = c["teacher"], c["student"], c["summary"]
        lines += ["", f"## Conv student vs teacher {results['conv-student']['teacher']}", "",
                  "| | teacher | student |", "|---|---:|---:|",
                  f"| test top-1 | {t['test_top1']:.2f} % | {s['test_top1']:.2f} % |",
                  f"| params | {t['params']:,} | {s['params']:,} |",
                  f"| ORT ms (1 thread, NPU graph, interleaved) | {t['ort_ms']:.3f} | {s['ort_ms']:.3f} |",
                  *[f"| {p.upper()} encoder relRMS | {100 * t['encoder'][p]['encoder_rel_rms']:.2f} % | "
                    f"{100 * s['encoder'][p]['encoder_rel_rms']:.2f} % |" for p in t["encoder"]],
                  "", f"Summary: {sm}. Latency load average {c['latency']['loadavg_before']}."]
    variants = {k[8:]: v["summary"] for k, v in results.items() if k.startswith("variant:")}
    if variants:
        lines += ["", "## Student variants (robustness phase ablation)", "",
                  "Each branches from the same distilled student (the distil-only row), so they differ only in the "
                  "quantisation-noise phase.", "",
                  "| variant | robust epochs × weight | test top-1 | W8A16 enc relRMS | W8A8 enc relRMS | W4A16 enc relRMS |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k, v in variants.items():
            weight = f"{v['robust_weight']:g}" if v["robust_epochs_done"] else "–"
            lines.append(f"| {k} | {v['robust_epochs_done']} × {weight} | {v['test_top1']:.2f} % | "
                         f"{v['w8a16_encoder_rel_rms_pct']:.2f} % | {v['w8a8_encoder_rel_rms_pct']:.2f} % | "
                         f"{v['w4a16_encoder_rel_rms_pct']:.2f} % |")
    lines.append("")
    for env in runs:
        lines.append(f"Run ({', '.join(env['models'])}): {env['wall_s']} s, {env['threads']} thread(s), load average "
                     f"{env['loadavg_start']} → {env['loadavg_end']}. {env['note']}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
