"""Users' own images: one sub-folder per class (labelled) or a flat folder (unlabelled)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevit.errors import UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as uint8 (size, size, channels), resized with antialiasing by Pillow."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 — PIL raises many types for bad files
        raise UsageError(f"cannot read image {path} ({type(e).__name__}); is it a PNG/JPEG file?") from e
    return arr[..., None] if arr.ndim == 2 else arr


def load_image_folder(root: str | Path, size: int, channels: int) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(images uint8 (N,size,size,C), labels or None, class names) from `root`."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"image folder {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if classes:
        files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())
                 if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(f, -1) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UsageError(f"no PNG/JPEG images under {root}; use one sub-folder per class or a flat folder")
    images = np.stack([read_image(f, size, channels) for f, _ in files])
    labels = np.array([i for _, i in files], dtype=np.int64) if classes else None
    return images, labels, classes
