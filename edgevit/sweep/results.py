"""A sweep's files: one JSON per finished cell (the resume state), and the tables rebuilt from them.

    OUT/cells/<key>.json    one row per cell, written when it finishes (temp file + rename)
    OUT/sweep.json          every row in grid order + how the sweep ran
    OUT/sweep.md            the same as a Markdown table
    OUT/pareto.png          size vs accuracy per model, the Pareto front drawn

Every file is written whole or not at all, so a killed sweep leaves only complete cells behind.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from edgevit.ptq.run import finite

MARKER = "sweep.json"


def atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_cell(out: Path, row: dict) -> None:
    atomic_write(out / "cells" / f"{row['key']}.json", json.dumps(finite(row), indent=1))


def read_cells(out: Path) -> dict[str, dict]:
    """Rows on disk by key; an unreadable file is not a finished cell (it runs again)."""
    rows = {}
    for f in sorted((out / "cells").glob("*.json")):
        try:
            row = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(row, dict) and row.get("key") == f.stem:
            rows[f.stem] = row
    return rows


def write_results(out: Path, rows: list[dict], info: dict, plot: bool = True) -> None:
    atomic_write(out / "sweep.json", json.dumps(finite({**info, "cells": rows}), indent=2))
    atomic_write(out / "sweep.md", markdown(rows, info))
    if plot and any(r.get("status") == "ok" for r in rows):
        pareto_plot(rows, out / "pareto.png")


def accuracy_key(rows: list[dict]) -> str:
    return "top1" if any("top1" in r for r in rows) else "agreement"


def _fmt(v, spec: str, none: str = "-") -> str:
    if v is None:
        return none
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def markdown(rows: list[dict], info: dict) -> str:
    done = sum(r.get("status") in ("ok", "n/a") for r in rows)
    nodes = sorted({r["node_id"] for r in rows if r.get("node_id")})
    exported = any(r.get("export") for r in rows)
    lines = [f"# Sweep `{info.get('name', 'sweep')}`", "",
             f"- {done}/{len(rows)} cells done; {info.get('workers')} workers on "
             f"{len(nodes)} Ray node(s); run on {info.get('address') or 'a local Ray instance'}",
             "- accuracy: top-1 % against labels where the data has them, else top-1 agreement % with FP32; "
             "SQNR of the logits against FP32; size: the packed checkpoint (onnxruntime: its QDQ .onnx); export: "
             "the artifact's bytes, parity and batch-1 latency on the worker's thread", "",
             "| model | tool | method | precision | top-1 % | agree % | SQNR dB | size kB | time s | node | status |"
             + (" export |" if exported else ""), "|---" * (11 + exported) + "|"]
    for r in rows:
        status = r.get("status", "pending")
        if status == "failed":
            status = f"failed: {r.get('error', '')}".replace("|", "/")
        elif status == "n/a":
            status = f"n/a: {r.get('na', '')}"
        size = r.get("size_bytes")
        lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | {r['precision']} | {_fmt(r.get('top1'), '.2f')} | "
                     f"{_fmt(r.get('agreement'), '.1f')} | {_fmt(r.get('sqnr_db'), '.1f')} | "
                     f"{_fmt(size / 1e3 if size else None, '.0f')} | {_fmt(r.get('wall_s'), '.1f')} | "
                     f"{(r.get('node_id') or '-')[:8]} | {status} |" + (f" {_export_cell(r.get('export'))} |" if exported else ""))
    return "\n".join(lines) + "\n"


def _export_cell(e: dict | None) -> str:
    if not e:
        return "-"
    sq = (e.get("parity") or {}).get("sqnr_db")
    lat = e.get("latency_ms")
    return (f"{e['runtime']} {e['artifact_bytes'] / 1e3:.0f} kB" + (f", parity {sq:.1f} dB" if sq is not None else "")
            + (f", {lat:.3f} ms" if lat is not None else ""))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (smaller size, higher accuracy), by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (sweeps run headless)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def pareto_plot(rows: list[dict], path: Path) -> None:
    """Accuracy against size per model and, where the cells exported an artifact, against its batch-1 latency."""
    import io
    plt = pyplot()
    ok = [r for r in rows if r.get("status") == "ok" and r.get("size_bytes")]
    models = list(dict.fromkeys(r["model"] for r in ok))
    if not models:
        return
    axes_of = [("size kB", lambda r: r["size_bytes"] / 1e3)]
    if any((r.get("export") or {}).get("latency_ms") for r in ok):
        axes_of.append(("latency ms (exported artifact, batch 1, 1 thread)",
                        lambda r: (r.get("export") or {}).get("latency_ms")))
    fig, axes = plt.subplots(len(axes_of), len(models), figsize=(6 * len(models), 5 * len(axes_of)), squeeze=False)
    colors = {"edgevit": "tab:blue", "onnxruntime": "tab:orange", "brevitas": "tab:green"}
    for row_axes, (xlabel, xof) in zip(axes, axes_of):
        for ax, m in zip(row_axes, models):
            sub = [r for r in ok if r["model"] == m and xof(r)]
            key = accuracy_key(sub) if sub else "top1"
            pts = [(xof(r), r[key]) for r in sub]
            for tool in dict.fromkeys(r["tool"] for r in sub):
                idx = [i for i, r in enumerate(sub) if r["tool"] == tool]
                ax.scatter([pts[i][0] for i in idx], [pts[i][1] for i in idx], c=colors.get(tool, "tab:gray"),
                           label=tool)
            for (s, a), r in zip(pts, sub):
                ax.annotate(f"{r['precision']} {r['method']}", (s, a), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
            front = pareto_front(pts)
            ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="k", lw=0.8,
                    label="Pareto front")
            fp = next((r.get("fp32_top1") for r in sub if key == "top1" and r.get("fp32_top1") is not None), None)
            if key == "agreement":
                fp = 100.0
            if fp is not None:
                ax.axhline(fp, color="k", ls="--", lw=0.6, label="FP32")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("top-1 %" if key == "top1" else "top-1 agreement with FP32 %")
            ax.set_title(m)
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
