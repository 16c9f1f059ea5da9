"""The bundled Fashion-MNIST family: three DeiT-style ViTs of depth 12 and one MobileNet-style CNN.

Widths double like DeiT Ti/S/B (32/64/128, head dim 16) so SN-Net stitching carries over; they are
narrower than DeiT's because every later stage (BRECQ, split distillation, stitch training, the QNN
emulator) runs on two CPU cores. Checkpoints and their training records live in `weights/`.
"""
from __future__ import annotations

from pathlib import Path

from edgevit.data.fashion_mnist import LABELS
from edgevit.data.preprocess import Preprocess
from edgevit.models.cnn import MobileNetMini
from edgevit.models.vit import VisionTransformer

WEIGHTS_DIR = Path(__file__).parent / "weights"
FASHION_MNIST_PREPROCESS = Preprocess(size=28, channels=1, mean=(0.2860,), std=(0.3530,))

VIT_WIDTHS = {"vit-tiny": 32, "vit-small": 64, "vit-base": 128}


def vit_factory(width: int):
    def build() -> VisionTransformer:
        return VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=10,
                                 embed_dim=width, depth=12, num_heads=width // 16, mlp_ratio=4.0)
    return build


BUNDLED = {
    **{name: dict(factory=vit_factory(w), family="fmnist-vit",
                  description=f"DeiT-style ViT, depth 12, width {w}, {w // 16} heads, 7x7 patches")
       for name, w in VIT_WIDTHS.items()},
    "mobilenet-mini": dict(factory=MobileNetMini, family="fmnist-cnn",
                           description="MobileNetV2-style depthwise-separable CNN"),
}


def checkpoint_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


def record_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.json"


LABELS = LABELS
