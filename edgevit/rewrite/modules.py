"""NPU-shaped building blocks: every activation is a rank-4 (B, C, 1, S) tensor, as AutoNeural and
Apple's ANE transformer reference lay them out, so every Linear is a 1×1 Conv2d and channels sit where
NPU convolution engines expect them.

Attention keeps one Transpose per block: kᵀ is formed once, scoresᵀ = kᵀ·q is (B, heads, keys,
queries) with softmax over the key axis, and out = v·scoresᵀ lands in (B, C, 1, S) by pure reshapes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over dim 1 of (B, C, 1, S), written in ReduceMean/Sub/Mul/Sqrt so no NPU needs a
    LayerNormalization kernel for a non-trailing axis."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, eps: float):
        super().__init__()
        c = weight.numel()
        self.eps = eps
        self.weight = nn.Parameter(weight.detach().clone().reshape(1, c, 1, 1))
        self.bias = nn.Parameter((bias if bias is not None else torch.zeros(c)).detach().clone().reshape(1, c, 1, 1))

    @classmethod
    def from_layernorm(cls, ln: nn.LayerNorm) -> "ChannelLayerNorm":
        if ln.weight is None:
            return cls(torch.ones(ln.normalized_shape), None, ln.eps)
        return cls(ln.weight, ln.bias, ln.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = x - x.mean(dim=1, keepdim=True)
        var = (xc * xc).mean(dim=1, keepdim=True)
        return xc / torch.sqrt(var + self.eps) * self.weight + self.bias


def conv1x1(linear: nn.Linear, rows: slice | None = None) -> nn.Conv2d:
    """A 1×1 Conv2d holding `linear`'s weights (optionally a slice of its output rows)."""
    w = linear.weight if rows is None else linear.weight[rows]
    b = linear.bias if (linear.bias is None or rows is None) else linear.bias[rows]
    conv = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=b is not None)
    with torch.no_grad():
        conv.weight.copy_(w.reshape(*w.shape, 1, 1))
        if b is not None:
            conv.bias.copy_(b)
    return conv


class NpuAttention(nn.Module):
    """Multi-head self-attention on (B, C, 1, S). `split_heads` issues one small matmul chain per
    head (ANE/HTP tile each independently); otherwise heads are a batch axis of a rank-4 matmul."""

    def __init__(self, qkv: nn.Conv2d, proj: nn.Conv2d, heads: int, scale: float):
        super().__init__()
        self.qkv, self.proj, self.heads, self.scale = qkv, proj, heads, scale
        self.split_heads = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, s = x.shape
        h, d = self.heads, c // self.heads
        q, k, v = self.qkv(x).split(c, dim=1)
        if self.scale != 1.0:
            q = q * self.scale
        kt = k.permute(0, 3, 2, 1)                               # (B, S, 1, C): the one transpose
        if self.split_heads:
            outs = []
            for qh, kh, vh in zip(q.split(d, 1), kt.split(d, 3), v.split(d, 1)):
                st = self.attend(qh.reshape(b, 1, d, s), kh.reshape(b, 1, s, d))        # (B,1,keys,queries)
                outs.append(self.aggregate(st, vh.reshape(b, 1, d, s)).reshape(b, d, 1, s))
            out = torch.cat(outs, dim=1)
        else:
            kt = kt.reshape(b, s, h, d).permute(0, 2, 1, 3)       # (B, H, S, d)
            st = self.attend(q.reshape(b, h, d, s), kt)           # (B, H, keys, queries)
            out = self.aggregate(st, v.reshape(b, h, d, s)).reshape(b, c, 1, s)
        return self.proj(out)

    def attend(self, q: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
        """scoresᵀ = softmax over keys of kᵀ·q; a method (like the bundled ViT's) so quant/ can
        quantise both matmul inputs of the rewritten graph exactly where it does in the original."""
        return (kt @ q).softmax(dim=2)

    def aggregate(self, attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v @ attn


class NpuMlp(nn.Module):
    def __init__(self, fc1: nn.Conv2d, act: nn.Module, fc2: nn.Conv2d):
        super().__init__()
        self.fc1, self.act, self.fc2 = fc1, act, fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class NpuBlock(nn.Module):
    """Pre-norm transformer block; `ls1/ls2` are LayerScale gammas (1, C, 1, 1) until folded."""

    def __init__(self, norm1, attn, norm2, mlp, ls1=None, ls2=None):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm1, attn, norm2, mlp
        self.ls1 = None if ls1 is None else nn.Parameter(ls1.detach().clone().reshape(1, -1, 1, 1))
        self.ls2 = None if ls2 is None else nn.Parameter(ls2.detach().clone().reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + (a if self.ls1 is None else a * self.ls1)
        m = self.mlp(self.norm2(x))
        return x + (m if self.ls2 is None else m * self.ls2)


class NpuViT(nn.Module):
    """A ViT encoder in (B, C, 1, S) layout; `forward_features` returns the normalised tokens
    (B, C, 1, S), `forward` the logits (B, classes)."""

    def __init__(self, patch: nn.Conv2d, cls: torch.Tensor | None, pos_cls: torch.Tensor | None,
                 pos_patch: torch.Tensor | None, norm_pre: nn.Module, blocks: list[NpuBlock], norm: nn.Module,
                 fc_norm: nn.Module, head: nn.Conv2d, pool: str, num_classes: int):
        super().__init__()
        dim = patch.out_channels
        as_param = (lambda t: None if t is None else nn.Parameter(t.detach().clone().reshape(1, dim, 1, -1)))
        self.patch, self.cls, self.pos_cls, self.pos_patch = patch, as_param(cls), as_param(pos_cls), as_param(pos_patch)
        self.norm_pre, self.blocks, self.norm, self.fc_norm = norm_pre, nn.Sequential(*blocks), norm, fc_norm
        self.head, self.pool, self.num_classes = head, pool, num_classes

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)
        b, c = x.shape[:2]
        x = x.reshape(b, c, 1, -1)
        if self.pos_patch is not None:
            x = x + self.pos_patch
        if self.cls is not None:
            cls = self.cls if self.pos_cls is None else self.cls + self.pos_cls
            if b != 1 or getattr(self, "edgevit_static_shape", (0,))[0] != 1:   # static batch 1: no Expand node
                cls = cls.expand(b, c, 1, 1)
            x = torch.cat([cls, x], dim=3)
        return self.norm_pre(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.embed(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :, :1] if self.pool == "token" else x.mean(dim=3, keepdim=True)
        return self.head(self.fc_norm(x)).reshape(x.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class LinearAsConv(nn.Module):
    """A Linear on (B, C) inputs run as a 1×1 Conv2d on (B, C, 1, 1)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.conv = conv1x1(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.reshape(x.shape[0], -1, 1, 1)).reshape(x.shape[0], -1)


class _GeluOp(torch.autograd.Function):
    """Exact GELU that exports as one `Gelu` node (com.microsoft below opset 20), which QNN and
    onnxruntime run natively, instead of the Div/Erf/Add/Mul chain whose Erf HTP lacks."""

    @staticmethod
    def forward(ctx, x):
        return F.gelu(x)

    @staticmethod
    def symbolic(g, x):
        if getattr(g, "opset", 17) >= 20:
            return g.op("Gelu", x, approximate_s="none")
        return g.op("com.microsoft::Gelu", x)


class GeluOp(nn.Module):
    def forward(self, x):
        return _GeluOp.apply(x)


class SigmoidGelu(nn.Module):
    """x·σ(1.702x): GELU from a sigmoid, for NPUs with neither erf nor tanh in their integer kernels."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)
