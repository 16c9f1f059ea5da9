"""StitchedModel: the anchors, their stitching layers and the list of configurations, in one module.

The anchors' weights are shared by every configuration; `set_config` only changes which route the
next forward takes, so switching costs a dictionary lookup, never a reload or a copy.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.stitch import anchors as A
from edgevit.stitch.space import StitchConfig, enumerate_configs, layers_needed


class StitchLinear(nn.Module):
    """Linear token map width_a → width_b; with rank r > 0 the base weight is frozen and a LoRA
    update B·A (SN-Netv2) is trained instead, so the least-squares solution is kept as the prior."""

    def __init__(self, d_in: int, d_out: int, rank: int = 0, alpha: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.rank = rank
        if rank > 0:
            self.weight.requires_grad_(False)
            self.bias.requires_grad_(False)
            self.lora_a = nn.Parameter(torch.empty(rank, d_in))
            self.lora_b = nn.Parameter(torch.zeros(d_out, rank))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.scale = alpha / rank

    @torch.no_grad()
    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight.copy_(weight)
        self.bias.copy_(bias)

    def effective_weight(self) -> torch.Tensor:
        if self.rank > 0:
            return self.weight + self.scale * (self.lora_b @ self.lora_a)
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


def _key(front: int, end: int) -> str:
    return f"{front}to{end}"


class StitchedModel(nn.Module):
    """SN-Net over `anchors` (sorted by width here). `forward` runs the configuration set by `set_config`."""

    def __init__(self, anchors: list[nn.Module], kernel: int = 2, stride: int = 1, two_way: bool = False,
                 lora_rank: int = 0, direction: str = "up", round_trip: bool = False):
        super().__init__()
        anchors = sorted(anchors, key=A.width)
        self.anchors = nn.ModuleList(anchors)
        self.depth = len(anchors[0].blocks)
        self.kernel, self.stride, self.two_way, self.lora_rank = kernel, stride, two_way, lora_rank
        self.direction, self.round_trip = direction, round_trip
        self.configs: list[StitchConfig] = enumerate_configs(self.depth, len(anchors), kernel, stride, two_way,
                                                             direction, round_trip)
        n_layers = layers_needed(self.depth, kernel, stride)
        pairs = sorted({(s.front, s.end) for c in self.configs for s in c.stitches})
        self.stitch_layers = nn.ModuleDict({
            _key(f, e): nn.ModuleList([StitchLinear(A.width(anchors[f]), A.width(anchors[e]), lora_rank)
                                       for _ in range(n_layers)]) for f, e in pairs})
        self.config_id = 0

    @property
    def num_configs(self) -> int:
        return len(self.configs)

    def anchors_view(self) -> "StitchedModel":
        """The same modules with only the anchor configurations (how the anchors score, before or after
        training, without evaluating every stitch)."""
        view = StitchedModel.__new__(StitchedModel)
        nn.Module.__init__(view)
        view.anchors, view.stitch_layers = self.anchors, self.stitch_layers
        view.depth, view.configs, view.config_id = self.depth, [c for c in self.configs if c.is_anchor], 0
        view.kernel, view.stride, view.two_way, view.lora_rank, view.direction, view.round_trip = \
            self.kernel, self.stride, self.two_way, self.lora_rank, self.direction, self.round_trip
        return view

    def set_config(self, config_id: int) -> None:
        """Select the route of the next forward passes (no weights move)."""
        if not 0 <= config_id < len(self.configs):
            raise IndexError(f"config {config_id} out of range 0..{len(self.configs) - 1}")
        self.config_id = config_id

    def stitch_layer(self, front: int, end: int, layer: int) -> StitchLinear:
        return self.stitch_layers[_key(front, end)][layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.configs[self.config_id])

    def run(self, x: torch.Tensor, cfg: StitchConfig) -> torch.Tensor:
        first = cfg.segments[0]
        h = A.embed(self.anchors[first.anchor], x)
        for blk in self.anchors[first.anchor].blocks[first.start:first.end]:
            h = blk(h)
        return self.run_tail(h, cfg)

    def run_tail(self, h: torch.Tensor, cfg: StitchConfig) -> torch.Tensor:
        """Continue from the output of the first segment (lets evaluation reuse cached anchor features)."""
        for stitch, seg in zip(cfg.stitches, cfg.segments[1:]):
            h = self.stitch_layer(stitch.front, stitch.end, stitch.layer)(h)
            for blk in self.anchors[seg.anchor].blocks[seg.start:seg.end]:
                h = blk(h)
        return A.finish(self.anchors[cfg.segments[-1].anchor], h)

    def config_params(self, cfg: StitchConfig) -> int:
        """Parameters a configuration runs (embedding of the first anchor, its blocks, stitches, last head)."""
        tail = ("norm.", "fc_norm.", "head.")
        first = self.anchors[cfg.segments[0].anchor]
        last = self.anchors[cfg.segments[-1].anchor]
        n = sum(p.numel() for k, p in first.named_parameters() if not k.startswith(("blocks.", *tail)))
        n += sum(p.numel() for k, p in last.named_parameters() if k.startswith(tail))
        for seg in cfg.segments:
            n += sum(p.numel() for blk in self.anchors[seg.anchor].blocks[seg.start:seg.end] for p in blk.parameters())
        return n + sum(self.stitch_layer(s.front, s.end, s.layer).weight.numel() + self.stitch_layer(
            s.front, s.end, s.layer).bias.numel() for s in cfg.stitches)


class ConfigView(nn.Module):
    """One configuration as a plain module (for export and MAC counting); shares the parent's weights."""

    def __init__(self, model: StitchedModel, config_id: int):
        super().__init__()
        self.model, self.cfg = model, model.configs[config_id]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.run(x, self.cfg)


def _shell(anchor: nn.Module, embed: bool, head: bool) -> nn.Module:
    """A copy of `anchor` without its blocks, and without the embedding or the head when not needed."""
    drop = {id(anchor.blocks): type(anchor.blocks)()}
    if not head:
        drop |= {id(getattr(anchor, n)): nn.Identity() for n in ("norm", "fc_norm", "head")
                 if isinstance(getattr(anchor, n, None), nn.Module)}
    if not embed:
        drop[id(anchor.patch_embed)] = nn.Identity()
        drop |= {id(p): None for n in ("cls_token", "reg_token", "pos_embed")
                 if isinstance(p := getattr(anchor, n, None), nn.Parameter)}
    return copy.deepcopy(anchor, drop)


@torch.no_grad()
def _as_linear(layer: StitchLinear) -> nn.Linear:
    """A plain Linear with the LoRA update merged: what PTQ quantises and exporters recognise."""
    w = layer.effective_weight()
    lin = nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype, device=w.device)
    lin.weight.copy_(w)
    lin.bias.copy_(layer.bias)
    return lin


class ConfigNet(nn.Module):
    """One configuration as a standalone network holding copies of only the modules its route runs.

    Why not ConfigView: a view holds every anchor, so PTQ would quantise (and the summary would size)
    layers the route never runs, and exporters that look for each quantised weight in the graph refuse
    it. The pipeline hands this to the stages after stitch; its output equals the view's.
    """

    def __init__(self, model: StitchedModel, config_id: int):
        super().__init__()
        cfg = model.configs[config_id]
        first, last = cfg.segments[0].anchor, cfg.segments[-1].anchor
        self.name = cfg.name
        self.stem = _shell(model.anchors[first], embed=True, head=first == last)
        self.tail = _shell(model.anchors[last], embed=False, head=True) if first != last else None
        self.segments = nn.ModuleList(
            nn.Sequential(*copy.deepcopy(list(model.anchors[s.anchor].blocks[s.start:s.end]))) for s in cfg.segments)
        self.stitches = nn.ModuleList(_as_linear(model.stitch_layer(s.front, s.end, s.layer)) for s in cfg.stitches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.segments[0](A.embed(self.stem, x))
        for stitch, seg in zip(self.stitches, self.segments[1:]):
            h = seg(stitch(h))
        return A.finish(self.tail if self.tail is not None else self.stem, h)
