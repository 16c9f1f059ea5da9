"""Real colour photographs for ImageNet models when no labelled ImageNet is at hand.

The sample photos that ship inside scikit-image and scikit-learn (offline, license-clean), each seen
through a fixed set of crops/flips: 7 scenes × 18 views = 126 images. They have no ImageNet labels; use
them to compare a transformed model against its FP32 self (agreement, SQNR) and as calibration data.

Views alternate between two disjoint halves: even-numbered views calibrate, odd-numbered ones evaluate
(`split_indices`), so a PTQ run never scores itself on the images it calibrated on. The first six views
are the original 42-image set, in the original order; later views were appended to make one image
worth 1.6 agreement points instead of 4.8.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from edgevit.data.preprocess import Preprocess
from edgevit.errors import UsageError

INSTALL_HINT = "pip install scikit-image scikit-learn"

# Only natural colour photographs (no microscopy, astronomy, synthetic or grayscale images).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")
SKLEARN_PHOTOS = ("china", "flower")

# (name, anchor, crop side as a fraction of the image's short side, mirror); append only, never reorder
VIEWS = (("center", "center", 1.0, False), ("center-flip", "center", 1.0, True),
         ("topleft", "start", 0.8, False), ("bottomright-flip", "end", 0.8, True),
         ("zoom70", "center", 0.7, False), ("zoom50-flip", "center", 0.5, True),
         ("bottomright", "end", 0.8, False), ("topleft-flip", "start", 0.8, True),
         ("topright", "topright", 0.8, False), ("bottomleft-flip", "bottomleft", 0.8, True),
         ("zoom85", "center", 0.85, False), ("zoom85-flip", "center", 0.85, True),
         ("bottomleft60", "bottomleft", 0.6, False), ("topright60-flip", "topright", 0.6, True),
         ("topleft60", "start", 0.6, False), ("bottomright60-flip", "end", 0.6, True),
         ("zoom50", "center", 0.5, False), ("zoom70-flip", "center", 0.7, True))
SPLITS = ("calib", "eval")


def source_photos() -> dict[str, np.ndarray]:
    """name → uint8 (H, W, 3) for every source photograph, in a fixed order."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise UsageError(f"the real-photo set needs scikit-image and scikit-learn; run `{INSTALL_HINT}`") from e
    photos = {}
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        photos[name] = image[0] if isinstance(image, tuple) else image   # stereo pair: the left view
    sample = load_sample_images()
    for path, image in zip(sample.filenames, sample.images):
        name = path.replace("\\", "/").rsplit("/", 1)[-1].split(".")[0]
        if name in SKLEARN_PHOTOS:
            photos[name] = image
    return photos


def _view(image: torch.Tensor, anchor: str, scale: float, mirror: bool, size: int) -> torch.Tensor:
    """A square crop of a (3, H, W) float image, resized to size×size with antialiasing."""
    _, h, w = image.shape
    side = int(round(min(h, w) * scale))
    offsets = {"start": (0, 0), "end": (h - side, w - side), "center": ((h - side) // 2, (w - side) // 2),
               "topright": (0, w - side), "bottomleft": (h - side, 0)}
    top, left = offsets[anchor]
    crop = image[:, top:top + side, left:left + side]
    if mirror:
        crop = crop.flip(-1)
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


@lru_cache(maxsize=4)
def _photo_stack(size: int) -> np.ndarray:
    """uint8 (N, size, size, 3), view-major so the first n images cover as many scenes as possible."""
    sources = source_photos()
    if len(sources) != len(SKIMAGE_PHOTOS) + len(SKLEARN_PHOTOS):
        raise UsageError(f"sample photos missing from scikit-learn; reinstall it: `{INSTALL_HINT}`")
    images = [torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).float() for im in sources.values()]
    views = [_view(im, anchor, scale, mirror, size) for _, anchor, scale, mirror in VIEWS for im in images]
    stack = torch.stack(views).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return stack.numpy()


def photo_names(n: int | None = None, split: str | None = None) -> list[str]:
    """`scene/view` for each image real_photos returns (same arguments), in the same order."""
    names = [f"{scene}/{view[0]}" for view in VIEWS for scene in (*SKIMAGE_PHOTOS, *SKLEARN_PHOTOS)]
    if split is not None:
        names = [names[i] for i in split_indices(split)]
    return names[:_check_n(n, len(names))]


def _check_n(n: int | None, total: int) -> int:
    if n is None:
        return total
    if not 0 < n <= total:
        raise UsageError(f"the real-photo set has {total} images; ask for 1..{total}, not {n}")
    return n


def split_indices(split: str) -> np.ndarray:
    """Image indices of one half: "calib" = views 0, 2, 4, … and "eval" = views 1, 3, 5, … (view-major)."""
    if split not in SPLITS:
        raise UsageError(f"unknown real-photo split {split!r}; use one of {', '.join(SPLITS)}")
    scenes = len(SKIMAGE_PHOTOS) + len(SKLEARN_PHOTOS)
    view = np.arange(len(VIEWS) * scenes) // scenes
    return np.flatnonzero(view % 2 == SPLITS.index(split))


def real_photos(preprocess: Preprocess, n: int | None = None, split: str | None = None) -> torch.Tensor:
    """The first `n` photos (default all) of the whole set or of one `split` half, as a model-ready float
    tensor (n, C, size, size)."""
    stack = _photo_stack(preprocess.size)
    if split is not None:
        stack = stack[split_indices(split)]
    return preprocess(stack[:_check_n(n, len(stack))])
