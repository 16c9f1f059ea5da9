"""Every configuration's accuracy and cost, the Pareto frontier, and choosing one under a budget.

Evaluation runs each anchor once per batch and caches the tokens leaving every block, so a
configuration only pays for its stitches and the blocks after its first stitch.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from edgevit.report.metrics import count_macs
from edgevit.stitch.anchors import block_inputs
from edgevit.stitch.model import ConfigView, StitchedModel


class SelectError(ValueError):
    """No configuration meets the budget, or the budget is malformed."""


def config_macs(model: StitchedModel, input_shape: tuple[int, ...]) -> list[int]:
    """MACs at batch 1 of every configuration (torch's FLOP counter, as `edgevit info`)."""
    return [count_macs(ConfigView(model, i), input_shape) for i in range(model.num_configs)]


@torch.no_grad()
def evaluate_configs(model: StitchedModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
                     progress: bool = True) -> list[float]:
    """Top-1 (%) of every configuration on (x, y)."""
    model.eval()
    correct = torch.zeros(model.num_configs, dtype=torch.long)
    batches = range(0, len(x), batch_size)
    bar = tqdm(total=len(batches) * model.num_configs, desc="eval configs", disable=not progress or None)
    for s in batches:
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        feats = [block_inputs(a, xb) for a in model.anchors]
        for cid, cfg in enumerate(model.configs):
            first = cfg.segments[0]
            logits = model.run_tail(feats[first.anchor][first.end], cfg)
            correct[cid] += (logits.argmax(-1) == yb).sum()
            bar.update()
    bar.close()
    return (100.0 * correct.double() / len(x)).tolist()


def pareto_front(cost: list[float], acc: list[float]) -> list[int]:
    """Ids of configurations no other beats on both cost (lower) and accuracy (higher), by cost."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -acc[i]))
    front, best = [], float("-inf")
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return front


def parse_amount(text: str) -> float:
    """`120M`, `1.5G`, `800k`, `3e6` → a number (for --max-macs)."""
    t = str(text).strip()
    mult = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}.get(t[-1:], 1.0)
    try:
        return float(t[:-1] if mult != 1.0 else t) * mult
    except ValueError:
        raise SelectError(f"cannot read {text!r} as an amount; write e.g. 120M, 1.5G or 800k") from None


def select(rows: list[dict], max_macs: float | None = None, max_latency_ms: float | None = None) -> dict:
    """The most accurate configuration within the budget (fewer MACs breaks ties). Rows of an artifact's
    manifest whose graph was not kept (`file: null`) cannot run, so they are not candidates."""
    if max_macs is None and max_latency_ms is None:
        raise SelectError("give a budget: --max-macs (e.g. 30M) or --max-latency-ms (e.g. 3)")
    rows = [r for r in rows if r.get("file", True)]
    if max_latency_ms is not None and any(r.get("latency_ms") is None for r in rows):
        raise SelectError("this artifact has no measured latencies; select with --max-macs")
    ok = [r for r in rows if (max_macs is None or r["macs"] <= max_macs)
          and (max_latency_ms is None or r["latency_ms"] <= max_latency_ms)]
    if not ok:
        cheapest = min(rows, key=lambda r: r["macs"])
        raise SelectError(f"no configuration fits the budget; the cheapest has {cheapest['macs'] / 1e6:.2f}M MACs"
                          + (f" and {cheapest['latency_ms']:.3f} ms" if cheapest.get("latency_ms") is not None else ""))
    return max(ok, key=lambda r: (r["top1"], -r["macs"]))


def plot_front(rows: list[dict], front: list[int], path, title: str) -> None:
    """Accuracy vs MACs: every configuration, anchors highlighted, the frontier as a line (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    macs = [r["macs"] / 1e6 for r in rows]
    acc = [r["top1"] for r in rows]
    ax.scatter(macs, acc, s=12, c="0.6", label="stitched configurations")
    ax.plot([macs[i] for i in front], [acc[i] for i in front], "-o", c="tab:blue", ms=3, lw=1.2, label="Pareto frontier")
    anchors = [i for i, r in enumerate(rows) if r["is_anchor"]]
    ax.scatter([macs[i] for i in anchors], [acc[i] for i in anchors], s=90, marker="*", c="tab:red", zorder=3,
               label="anchors")
    for i in anchors:
        ax.annotate(rows[i].get("anchor_name") or rows[i]["name"], (macs[i], acc[i]), textcoords="offset points",
                    xytext=(4, -12), fontsize=8)
    ax.set_xlabel("MACs per image (M)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
