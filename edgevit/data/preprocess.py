"""Preprocessing declared by each model (not by call sites): resize, channel repeat, normalise."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preprocess:
    size: int                      # square input side the model expects
    channels: int                  # 1 = grayscale; 3 = repeat grayscale / keep RGB
    mean: tuple[float, ...]        # per output channel, on [0, 1] pixels
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]))

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 images (N,H,W) or (N,H,W,C) → float tensor (N, channels, size, size), normalised."""
        x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
        if x.ndim == 3:
            x = x.unsqueeze(-1)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:  # ITU-R 601 luma
                x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                raise ValueError(f"cannot map {x.shape[1]} image channels to {self.channels}")
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()
