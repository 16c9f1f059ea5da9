"""Model statistics and error metrics used across reports."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fp32_size_bytes(model: nn.Module) -> int:
    return sum(t.numel() * 4 for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch's FLOP counter / 2): convs,
    linears and attention matmuls."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_shape))
    return counter.get_total_flops() // 2


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantisation-noise ratio in dB: 10·log10(‖ref‖² / ‖ref − test‖²)."""
    ref, err = reference.double(), (reference.double() - test.double())
    noise = err.pow(2).sum().item()
    return float("inf") if noise == 0 else 10.0 * torch.log10(ref.pow(2).sum() / noise).item()


def human_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"
