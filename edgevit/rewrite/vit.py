"""Convert a ViT (the bundled family or timm's VisionTransformer) into the NPU layout of `modules.py`.

Only the structure both share is accepted: conv patch embedding, optional class token, learned
position embedding, pre-norm blocks (norm1/attn/norm2/mlp, optional LayerScale), token or mean
pooling, a Linear head; split sub-models (`edgevit.split.subvit`) whose blocks lost heads, MLP width
or a whole branch are accepted too. Anything else (register tokens, q/k-norm, dynamic image size) is refused
by name rather than converted approximately.
"""
from __future__ import annotations

import torch
from torch import nn

from edgevit.errors import UsageError
from edgevit.rewrite.modules import ChannelLayerNorm, NpuAttention, NpuBlock, NpuMlp, NpuViT, conv1x1


class NpuPrunedAttention(NpuAttention):
    """Attention whose inner width (heads × head_dim, from a pruned split sub-model) differs from the
    block's channels: q/k/v are split at the inner width instead of the input width. A block left
    with one head runs token-major rank-3 matmuls: litert-torch mis-lowers a size-1 head axis and the
    channel-major rank-3 form (invalid or numerically wrong tfl.batch_matmul); checked by tests."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, _, s = x.shape
        c = self.proj.in_channels
        h, d = self.heads, c // self.heads
        q, k, v = self.qkv(x).split(c, dim=1)
        if self.scale != 1.0:
            q = q * self.scale
        kt = k.permute(0, 3, 2, 1)                               # (B, S, 1, C)
        if h == 1:   # token-major rank 3: (S, C)·(C, S) scores, (S, S)·(S, C) output, one permute back
            tok = lambda t: t.permute(0, 3, 2, 1).reshape(b, s, c)   # noqa: E731
            out = self.aggregate(self.attend(tok(q), k.reshape(b, c, s)), tok(v)).permute(0, 2, 1)
        elif self.split_heads:
            outs = [self.aggregate(self.attend(qh.reshape(b, 1, d, s), kh.reshape(b, 1, s, d)), vh.reshape(b, 1, d, s))
                    for qh, kh, vh in zip(q.split(d, 1), kt.split(d, 3), v.split(d, 1))]
            out = torch.cat([o.reshape(b, d, 1, s) for o in outs], dim=1)
        else:
            st = self.attend(q.reshape(b, h, d, s), kt.reshape(b, s, h, d).permute(0, 2, 1, 3))
            out = self.aggregate(st, v.reshape(b, h, d, s))
        return self.proj(out.reshape(b, c, 1, s))

    def attend(self, q: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
        if q.dim() == 3:   # one head, token-major: q (B, S, C), k (B, C, S) → (B, queries, keys)
            return (q @ kt).softmax(dim=-1)
        return (kt @ q).softmax(dim=2)

    def aggregate(self, attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attn @ v if v.dim() == 3 else v @ attn


class NpuPrunedBlock(NpuBlock):
    """A split sub-model's block with its attention or MLP branch pruned away (None): the residual
    passes straight through, so no zero-sized or masked op reaches the graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            a = self.attn(self.norm1(x))
            x = x + (a if self.ls1 is None else a * self.ls1)
        if self.mlp is not None:
            m = self.mlp(self.norm2(x))
            x = x + (m if self.ls2 is None else m * self.ls2)
        return x


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
    npu_attn = npu_mlp = None
    if attn is not None:
        for name in ("q_norm", "k_norm", "norm"):
            if not _identity(getattr(attn, name, None)):
                raise UsageError(f"blocks.{i}.attn.{name} is not Identity; q/k-norm attention is not supported yet")
        if not (isinstance(attn.qkv, nn.Linear) and isinstance(attn.proj, nn.Linear)):
            raise UsageError(f"blocks.{i}.attn needs Linear qkv/proj layers")
        pruned = attn.proj.in_features != attn.proj.out_features
        npu_attn = (NpuPrunedAttention if pruned else NpuAttention)(conv1x1(attn.qkv), conv1x1(attn.proj),
                                                                     attn.num_heads, float(attn.scale))
    if mlp is not None:
        if not _identity(getattr(mlp, "norm", None)):
            raise UsageError(f"blocks.{i}.mlp.norm is not Identity; not supported yet")
        npu_mlp = NpuMlp(conv1x1(mlp.fc1), mlp.act, conv1x1(mlp.fc2))
    cls = NpuBlock if (attn is not None and mlp is not None) else NpuPrunedBlock
    return cls(_norm(blk.norm1, f"blocks.{i}.norm1"), npu_attn, _norm(blk.norm2, f"blocks.{i}.norm2"),
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
