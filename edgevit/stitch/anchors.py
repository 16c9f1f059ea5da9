"""The three calls stitching needs from a ViT anchor — embed, blocks, finish — for the bundled family
and timm's VisionTransformer (same parameter names), so user timm families stitch the same way."""
from __future__ import annotations

import torch
from torch import nn


class AnchorError(ValueError):
    """An anchor that cannot be stitched (not a ViT, depth or token count mismatch)."""


def embed(anchor: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Image → token sequence entering block 0."""
    if hasattr(anchor, "embed"):                       # edgevit.models.vit
        return anchor.embed(x)
    h = anchor._pos_embed(anchor.patch_embed(x))       # timm VisionTransformer
    return anchor.norm_pre(anchor.patch_drop(h))


def finish(anchor: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Tokens after the last block → logits (final norm, pooling, head)."""
    return anchor.forward_head(anchor.norm(h))


def width(anchor: nn.Module) -> int:
    return int(anchor.embed_dim)


def check_anchors(anchors: list[nn.Module], input_shape: tuple[int, ...]) -> None:
    """Raise AnchorError unless all anchors are ViTs of one depth with the same token count."""
    for i, a in enumerate(anchors):
        missing = [n for n in ("blocks", "embed_dim", "norm", "forward_head") if not hasattr(a, n)]
        if missing:
            raise AnchorError(f"anchor {i} ({type(a).__name__}) is not a ViT: no {', '.join(missing)}; "
                              "stitching needs timm-style VisionTransformers")
    depths = {len(a.blocks) for a in anchors}
    if len(depths) != 1:
        raise AnchorError(f"anchors have depths {sorted(depths)}; paired stitching needs equal depths")
    with torch.no_grad():
        tokens = {tuple(embed(a.eval(), torch.zeros(input_shape)).shape[1:2]) for a in anchors}
    if len(tokens) != 1:
        raise AnchorError(f"anchors produce {sorted(tokens)} tokens; they must share patch size and input size")
    if len({width(a) for a in anchors}) != len(anchors):
        raise AnchorError("two anchors have the same width; stitch anchors of different sizes")


@torch.no_grad()
def block_inputs(anchor: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(depth + 1, B, N, D): the tokens entering each block; the last entry leaves the last block."""
    h = embed(anchor, x)
    out = [h]
    for blk in anchor.blocks:
        h = blk(h)
        out.append(h)
    return torch.stack(out)
