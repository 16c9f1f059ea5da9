"""Convert a ViT (the bundled family or timm's VisionTransformer) into the NPU layout of `modules.py`.

Only the structure both share is accepted: conv patch embedding, optional class token, learned
position embedding, pre-norm blocks (norm1/attn/norm2/mlp, optional LayerScale), token or mean
pooling, a Linear head. Anything else (register tokens, q/k-norm, dynamic image size) is refused
by name rather than converted approximately.
"""
from __future__ import annotations

from torch import nn

from edgevit.errors import UsageError
from edgevit.rewrite.modules import ChannelLayerNorm, NpuAttention, NpuBlock, NpuMlp, NpuViT, conv1x1


def is_vit(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("patch_embed", "blocks", "pos_embed")) and \
        isinstance(getattr(model.patch_embed, "proj", None), nn.Conv2d)


def _norm(m: nn.Module | None, where: str) -> nn.Module:
    if m is None or isinstance(m, nn.Identity):
        return nn.Identity()
    if isinstance(m, nn.LayerNorm):
        return ChannelLayerNorm.from_layernorm(m)
    raise UsageError(f"{where} is a {type(m).__name__}; the NPU rewrite handles LayerNorm or Identity there")


def _identity(m: nn.Module | None) -> bool:
    return m is None or isinstance(m, (nn.Identity, nn.Dropout))


def _gamma(ls: nn.Module | None):
    if _identity(ls):
        return None
    if hasattr(ls, "gamma"):
        return ls.gamma
    raise UsageError(f"unsupported LayerScale module {type(ls).__name__}")


def _block(blk: nn.Module, i: int) -> NpuBlock:
    attn, mlp = blk.attn, blk.mlp
    for name in ("q_norm", "k_norm", "norm"):
        if not _identity(getattr(attn, name, None)):
            raise UsageError(f"blocks.{i}.attn.{name} is not Identity; q/k-norm attention is not supported yet")
    if not (isinstance(attn.qkv, nn.Linear) and isinstance(attn.proj, nn.Linear)):
        raise UsageError(f"blocks.{i}.attn needs Linear qkv/proj layers")
    if not _identity(getattr(mlp, "norm", None)):
        raise UsageError(f"blocks.{i}.mlp.norm is not Identity; not supported yet")
    npu_attn = NpuAttention(conv1x1(attn.qkv), conv1x1(attn.proj), attn.num_heads, float(attn.scale))
    npu_mlp = NpuMlp(conv1x1(mlp.fc1), mlp.act, conv1x1(mlp.fc2))
    return NpuBlock(_norm(blk.norm1, f"blocks.{i}.norm1"), npu_attn, _norm(blk.norm2, f"blocks.{i}.norm2"),
                    npu_mlp, _gamma(getattr(blk, "ls1", None)), _gamma(getattr(blk, "ls2", None)))


def to_npu_vit(model: nn.Module) -> NpuViT:
    """The same function as `model` in (B, C, 1, S) layout; weights are copied, not shared."""
    pe = model.patch_embed
    if not _identity(getattr(pe, "norm", None)):
        raise UsageError("patch_embed.norm is not Identity; not supported by the NPU rewrite yet")
    if getattr(model, "reg_token", None) is not None or getattr(model, "dynamic_img_size", False):
        raise UsageError("register tokens / dynamic image size are not supported by the NPU rewrite")
    pool = getattr(model, "global_pool", "token")
    if pool not in ("token", "avg"):
        raise UsageError(f"global_pool={pool!r} is not supported; use 'token' or 'avg'")
    head = model.head
    if not isinstance(head, nn.Linear):
        raise UsageError("the model needs a Linear classification head for the NPU rewrite")
    cls = getattr(model, "cls_token", None)
    pos = model.pos_embed
    pos_cls = pos_patch = None
    if pos is not None:
        if cls is not None and not getattr(model, "no_embed_class", False):
            pos_cls, pos_patch = pos[:, :1], pos[:, 1:]
        else:
            pos_patch = pos
    t = lambda p: None if p is None else p.transpose(1, 2)  # noqa: E731 — (1, N, C) → (1, C, N)
    patch = nn.Conv2d(pe.proj.in_channels, pe.proj.out_channels, pe.proj.kernel_size, pe.proj.stride,
                      pe.proj.padding, bias=pe.proj.bias is not None)
    patch.load_state_dict(pe.proj.state_dict())
    blocks = [_block(b, i) for i, b in enumerate(model.blocks)]
    return NpuViT(patch, t(cls), t(pos_cls), t(pos_patch), _norm(getattr(model, "norm_pre", None), "norm_pre"),
                  blocks, _norm(getattr(model, "norm", None), "norm"), _norm(getattr(model, "fc_norm", None), "fc_norm"),
                  conv1x1(head), pool, head.out_features).eval()
