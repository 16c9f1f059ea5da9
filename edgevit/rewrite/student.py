"""The NPU-native student of `rewrite --distill conv`: a MobileNetV5-style depthwise-separable encoder.

AutoNeural replaces the ViT encoder with MobileNetV5's conv encoder because every op in it (Conv,
depthwise Conv, BatchNorm folded into Conv, ReLU6, Add, GlobalAveragePool) is native to integer NPUs
and its activations are bounded, so 8-bit activations lose little. The blocks are MobileNetV4's
universal inverted bottleneck (UIB), which MobileNetV5 stacks: an optional depthwise conv before the
1×1 expansion, an optional one after it, then a 1×1 projection — (start_k, mid_k) = (0, 3) is the
MobileNetV2 inverted residual, (3, 0) the ConvNeXt-like block, (3, 3) "ExtraDW", (0, 0) an FFN.
The stages downsample 28 → 14 → 7 → 4, so the last feature map is the 4×4 grid of the teacher's
7×7 patches and the feature distillation can match it position by position.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

ACTIVATIONS = {"relu6": nn.ReLU6, "hardswish": nn.Hardswish}


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: str | None = "relu6") -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


class UIB(nn.Module):
    """Universal inverted bottleneck: [dw start_k] → 1×1 expand → [dw mid_k] → 1×1 project (+ residual).
    The stride sits on the middle depthwise when there is one, else on the start one."""

    def __init__(self, cin: int, cout: int, expand: float, start_k: int, mid_k: int, stride: int, act: str):
        super().__init__()
        hidden = int(round(cin * expand))
        if stride != 1 and not (start_k or mid_k):
            raise ValueError("a strided UIB needs a depthwise conv (start_k or mid_k)")
        layers = []
        if start_k:
            layers.append(conv_bn(cin, cin, start_k, stride if not mid_k else 1, groups=cin, act=None))
        layers.append(conv_bn(cin, hidden, 1, act=act))
        if mid_k:
            layers.append(conv_bn(hidden, hidden, mid_k, stride, groups=hidden, act=act))
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


@dataclass(frozen=True)
class StudentConfig:
    """Stage table (out_channels, expand, start_k, mid_k, stride) per block; sized so the default
    distillation (60k images, a few epochs) fits in minutes on two CPU cores."""
    in_chans: int = 1
    num_classes: int = 10
    stem: int = 16
    blocks: tuple = ((24, 2.0, 3, 0, 2),     # 14 → 7, ConvNeXt-like (cheap at the largest resolution)
                     (48, 3.0, 0, 3, 1),     # 7×7, inverted residual
                     (48, 3.0, 3, 3, 1),     # 7×7, ExtraDW (residual)
                     (96, 3.0, 0, 3, 2),     # 7 → 4
                     (96, 3.0, 3, 3, 1),     # 4×4, ExtraDW (residual)
                     (96, 3.0, 0, 0, 1))     # 4×4, FFN (residual)
    feature_dim: int = 192
    act: str = "relu6"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StudentConfig":
        return cls(**{**d, "blocks": tuple(tuple(b) for b in d["blocks"])})


class ConvStudent(nn.Module):
    """`features` (the encoder: stem, UIB blocks, 1×1 to `feature_dim`, all activations bounded)
    → global average pool → Linear classifier. `forward_features` returns the (B, D, 4, 4) map."""

    def __init__(self, config: StudentConfig = StudentConfig()):
        super().__init__()
        if config.act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {config.act!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.config = config
        layers, cin = [conv_bn(config.in_chans, config.stem, 3, 2, act=config.act)], config.stem
        for cout, expand, start_k, mid_k, stride in config.blocks:
            layers.append(UIB(cin, cout, expand, start_k, mid_k, stride, config.act))
            cin = cout
        layers.append(conv_bn(cin, config.feature_dim, 1, act=config.act))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(config.feature_dim, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, f):
        return self.classifier(self.pool(f).flatten(1))

    def forward(self, x):
        return self.forward_head(self.features(x))
