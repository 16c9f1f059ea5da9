"""Plots of the PTQ stage: the mixed-precision Pareto front and per-layer sensitivity bars (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path


def plot_pareto(pareto: list, uniform: dict, chosen: dict, path: Path, metric: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = sorted(pareto, key=lambda p: p["size_bytes"])
    ax.plot([p["size_bytes"] / 1e6 for p in pts], [p["top1"] for p in pts], "o-", label="mixed precision (DP)")
    for label, p in uniform.items():
        ax.scatter(p["size_bytes"] / 1e6, p["top1"], marker="s")
        ax.annotate(label, (p["size_bytes"] / 1e6, p["top1"]), fontsize=7)
    ax.scatter(chosen["size_bytes"] / 1e6, chosen["top1"], marker="*", s=200, c="red", label="chosen", zorder=5)
    ax.set_xlabel("model size (MB)")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sensitivity(rows: list, path: Path, metric: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(rows)), 4))
    xs = range(len(rows))
    ax.bar(xs, [r["only_drop"] for r in rows], label=f"{metric} drop, only this layer quantised")
    if rows and "float_gain" in rows[0]:
        ax.bar(xs, [-r["float_gain"] for r in rows], alpha=0.6, label="−gain when only this layer is float")
    ax.set_xticks(list(xs), [r["layer"] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

