"""A ViT whose blocks each keep their own number of heads and MLP width: the pruned sub-model.

`SubViT.from_vit` slices a timm-named ViT (the bundled family, or a timm DeiT without layer scale)
into a genuinely smaller dense module: qkv rows and proj columns of the kept heads, fc1 rows and
fc2 columns of the kept hidden units. A block left with no heads (or no hidden units) drops that
branch entirely, so its residual passes straight through — no masked weights, no zero-sized ops.
Optional per-head / per-unit / per-branch gates (default off) let `prune.py` take Taylor scores.
Attention exposes `attend`/`aggregate` like the bundled ViT's, so quant/ can quantise its matmuls.
"""
from __future__ import annotations

import torch
from torch import nn

from edgevit.errors import UsageError
from edgevit.models.vit import PatchEmbed


class PrunedAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = heads, head_dim, head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)
        self.gate: torch.Tensor | None = None   # (B, heads) or (heads,) while scoring importance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = self.aggregate(self.attend(q * self.scale, k), v)                # (B, H, N, hd)
        if self.gate is not None:
            out = out * self.gate.reshape(-1, self.num_heads, 1, 1)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))

    def attend(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (q @ k.transpose(-2, -1)).softmax(dim=-1)

    def aggregate(self, attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attn @ v


class PrunedMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.gate: torch.Tensor | None = None   # (B, hidden) or (hidden,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        if self.gate is not None:
            h = h * self.gate.reshape(-1, 1, h.shape[-1])
        return self.fc2(h)


class PrunedBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6) if heads else None
        self.attn = PrunedAttention(dim, heads, head_dim) if heads else None
        self.norm2 = nn.LayerNorm(dim, eps=1e-6) if hidden else None
        self.mlp = PrunedMlp(dim, hidden) if hidden else None
        self.gates: tuple[torch.Tensor, torch.Tensor] | None = None   # per-sample (B,) branch gates while scoring

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g1, g2 = (None, None) if self.gates is None else (g.reshape(-1, 1, 1) for g in self.gates)
        if self.attn is not None:
            a = self.attn(self.norm1(x))
            x = x + (a if g1 is None else a * g1)
        if self.mlp is not None:
            m = self.mlp(self.norm2(x))
            x = x + (m if g2 is None else m * g2)
        return x


class SubViT(nn.Module):
    """ViT with per-block head counts and MLP widths; `config` rebuilds the architecture."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, head_dim: int,
                 heads: list[int], hidden: list[int], num_outputs: int):
        super().__init__()
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, dim=dim,
                           head_dim=head_dim, heads=list(map(int, heads)), hidden=list(map(int, hidden)),
                           num_outputs=int(num_outputs))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        self.blocks = nn.Sequential(*[PrunedBlock(dim, h, head_dim, m) for h, m in zip(heads, hidden)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    @classmethod
    def from_config(cls, config: dict) -> "SubViT":
        return cls(**config)

    @classmethod
    @torch.no_grad()
    def from_vit(cls, vit: nn.Module, keep_heads: list[torch.Tensor] | None = None,
                 keep_hidden: list[torch.Tensor] | None = None, head_weight: torch.Tensor | None = None,
                 head_bias: torch.Tensor | None = None) -> "SubViT":
        """Copy `vit` keeping, per block, the head indices `keep_heads[i]` and hidden units `keep_hidden[i]`
        (all when None); the classifier is `vit.head` or the given rows."""
        check_vit(vit)
        blocks = list(vit.blocks)
        dim = vit.cls_token.shape[-1]
        head_dim = dim // blocks[0].attn.num_heads
        keep_heads = keep_heads or [torch.arange(b.attn.num_heads) for b in blocks]
        keep_hidden = keep_hidden or [torch.arange(b.mlp.fc1.out_features) for b in blocks]
        hw = vit.head.weight if head_weight is None else head_weight
        hb = vit.head.bias if head_bias is None else head_bias
        conv = vit.patch_embed.proj
        sub = cls(_img_size(vit), conv.kernel_size[0], conv.in_channels, dim, head_dim,
                  [len(h) for h in keep_heads], [len(m) for m in keep_hidden], hw.shape[0])
        sub.patch_embed.proj.load_state_dict(conv.state_dict())
        sub.cls_token.copy_(vit.cls_token)
        sub.pos_embed.copy_(vit.pos_embed)
        sub.norm.load_state_dict(vit.norm.state_dict())
        sub.head.weight.copy_(hw)
        sub.head.bias.copy_(hb)
        for src, dst, kh, km in zip(blocks, sub.blocks, keep_heads, keep_hidden):
            if dst.attn is not None:
                dst.norm1.load_state_dict(src.norm1.state_dict())
                rows = (torch.arange(3)[:, None, None] * dim + kh.sort().values[None, :, None] * head_dim
                        + torch.arange(head_dim)[None, None, :]).reshape(-1)
                cols = (kh.sort().values[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
                dst.attn.qkv.weight.copy_(src.attn.qkv.weight[rows])
                dst.attn.qkv.bias.copy_(src.attn.qkv.bias[rows])
                dst.attn.proj.weight.copy_(src.attn.proj.weight[:, cols])
                dst.attn.proj.bias.copy_(src.attn.proj.bias)
            if dst.mlp is not None:
                dst.norm2.load_state_dict(src.norm2.state_dict())
                km = km.sort().values
                dst.mlp.fc1.weight.copy_(src.mlp.fc1.weight[km])
                dst.mlp.fc1.bias.copy_(src.mlp.fc1.bias[km])
                dst.mlp.fc2.weight.copy_(src.mlp.fc2.weight[:, km])
                dst.mlp.fc2.bias.copy_(src.mlp.fc2.bias)
        return sub.eval()


def _img_size(vit: nn.Module) -> int:
    grid = int(round((vit.pos_embed.shape[1] - 1) ** 0.5))
    return grid * vit.patch_embed.proj.kernel_size[0]


def check_vit(vit: nn.Module) -> None:
    """Raise UsageError unless `vit` has the timm ViT layout split understands (cls token, qkv, fc1/fc2)."""
    needed = ("patch_embed", "cls_token", "pos_embed", "blocks", "norm", "head")
    if not all(hasattr(vit, n) for n in needed) or not isinstance(getattr(vit, "head", None), nn.Linear):
        raise UsageError(f"split needs a ViT with a class token and timm parameter names; "
                         f"{type(vit).__name__} is not one (try vit-tiny, vit-small or vit-base)")
    for i, b in enumerate(vit.blocks):
        ok = all(hasattr(b, n) for n in ("norm1", "attn", "norm2", "mlp")) and hasattr(b.attn, "qkv") \
            and hasattr(b.mlp, "fc1") and b.attn.qkv.bias is not None
        extras = [n for owner in (b, getattr(b, "attn", None)) for n in ("ls1", "ls2", "q_norm", "k_norm")
                  if isinstance(getattr(owner, n, None), nn.Module) and not isinstance(getattr(owner, n), nn.Identity)]
        if not ok or extras:
            raise UsageError(f"block {i} of {type(vit).__name__} is not a plain pre-norm ViT block "
                             f"(qkv with bias, no layer scale / qk-norm); split supports DeiT-style ViTs")
