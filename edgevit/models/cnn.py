"""A small MobileNet-style CNN (depthwise-separable inverted residuals) for Fashion-MNIST."""
from __future__ import annotations

from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand → 3x3 depthwise → 1x1 project, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [conv_bn(cin, hidden, k=1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, k=3, stride=stride, groups=hidden), conv_bn(hidden, cout, k=1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetMini(nn.Module):
    """28×28 grayscale in, 10 classes out; a stride-2 stem, then 14×14 and 7×7 stages (cheap on CPUs)."""

    # (expand, out_channels, repeats, stride)
    SETTINGS = ((1, 16, 1, 1), (4, 24, 2, 1), (4, 48, 3, 2), (4, 64, 2, 1))

    def __init__(self, in_chans: int = 1, num_classes: int = 10, stem: int = 16, last: int = 256):
        super().__init__()
        layers, cin = [conv_bn(in_chans, stem, 3, 2)], stem
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(conv_bn(cin, last, k=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
