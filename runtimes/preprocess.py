"""Image preprocessing from a manifest's `preprocess` block, with Pillow + numpy only.

Runs on a device without torch; mirrors edgevit's Preprocess: [0,1] pixels, grayscale↔RGB by channel
count (ITU-R 601 luma), antialiased bilinear resize to a square, per-channel mean/std.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.errors import RuntimeArtifactError


def load_images(paths: list[str | Path], spec: dict) -> np.ndarray:
    """Image files → float32 (N, C, size, size) ready for the artifact's input."""
    from PIL import Image, UnidentifiedImageError
    size, channels = int(spec["size"]), int(spec["channels"])
    mean = np.asarray(spec["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(1, -1, 1, 1)
    batch = np.empty((len(paths), size, size, channels), np.float32)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
                arr = np.asarray(im, np.float32)
        except (UnidentifiedImageError, OSError) as e:
            raise RuntimeArtifactError(f"cannot read image {p} ({type(e).__name__}); give PNG/JPEG files") from e
        batch[i] = arr.reshape(size, size, channels)
    x = batch.transpose(0, 3, 1, 2) * np.float32(spec.get("pixel_scale", 1 / 255))
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def normalise_uint8(images: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 (N,H,W) images already at the model's size → float32 (N,C,H,W); for data sets held as arrays."""
    x = images.astype(np.float32)[:, None] * np.float32(spec.get("pixel_scale", 1 / 255))
    x = np.repeat(x, int(spec["channels"]), axis=1)
    mean = np.asarray(spec["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)
