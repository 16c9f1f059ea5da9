"""The in-memory split model: N class-wise sub-models and the fusion MLP that joins their outputs.

Each sub-model emits |S_i|+1 logits (its classes and "other"); the fusion head sees their
concatenation. Its input standardisation is baked in as buffers, so a missing device's slice can be
filled with the training mean (standardised zero) when a degraded prediction is asked for.
A quantised split (`--bits`) holds quant/ fake-quant modules; its config records the quant settings so
`load_split` rebuilds the same quantisers and loads their calibrated scales from the weights file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from edgevit.errors import UsageError
from edgevit.split.subvit import SubViT


@dataclass(frozen=True)
class SplitQuant:
    bits: str                     # e.g. w8a8
    fmt: str = "int"              # quant/ family: int, fp4, fp6, fp8, mx...
    fusion: bool = False          # quantise the fusion head too
    calib_images: int = 256

    def to_dict(self) -> dict:
        return asdict(self)

    def spec(self):
        """The quant/ spec; a bad `--bits`/`--fmt` is a one-line UsageError before any work."""
        import quant
        try:
            return quant.parse_spec(self.fmt, self.bits)
        except quant.SpecError as e:
            raise UsageError(f"--bits {self.bits} --fmt {self.fmt}: {e}") from e


class FusionHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.fc1, self.act, self.fc2 = nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, num_classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1((f - self.mean) / self.std)))


class SplitModel(nn.Module):
    """`forward(x)` = fusion(concat(sub_i(x))): what the executors reproduce across devices."""

    def __init__(self, subs: list[SubViT], subsets: list[list[int]], fusion: FusionHead, quant: dict | None = None):
        super().__init__()
        self.subs = nn.ModuleList(subs)
        self.subsets = [list(map(int, s)) for s in subsets]
        self.fusion = fusion
        self.quant = quant          # SplitQuant.to_dict() when the sub-models are quantised

    def sub_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m(x) for m in self.subs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fusion(torch.cat(self.sub_outputs(x), dim=-1))

    def config(self) -> dict:
        return {"subs": [m.config for m in self.subs], "subsets": self.subsets,
                "fusion": {"in_dim": self.fusion.fc1.in_features, "hidden": self.fusion.fc1.out_features,
                           "num_classes": self.fusion.fc2.out_features}, "quant": self.quant}

    @classmethod
    def from_config(cls, config: dict) -> "SplitModel":
        f = config["fusion"]
        subs = [SubViT.from_config(c) for c in config["subs"]]
        fusion = FusionHead(f["in_dim"], f["num_classes"], f["hidden"])
        q = config.get("quant")
        if q:   # same quantisers; a dummy batch only sizes them, load_state_dict brings the real scales
            import quant
            spec = SplitQuant(**q).spec()
            subs = [quant.quantize_model(s, spec, torch.zeros(1, s.config["in_chans"], s.config["img_size"],
                                                              s.config["img_size"])) for s in subs]
            if q["fusion"]:
                fusion = quant.quantize_model(fusion, spec, torch.zeros(1, f["in_dim"]))
        return cls(subs, config["subsets"], fusion, q)


def save_split(model: SplitModel, directory: Path) -> list[Path]:
    """Torch weights (safetensors) + architecture JSON, so `load_split` rebuilds the exact module."""
    from safetensors.torch import save_file
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "split.safetensors"))
    (directory / "split_config.json").write_text(json.dumps(model.config(), indent=1) + "\n")
    return [directory / "split.safetensors", directory / "split_config.json"]


def load_split(directory: str | Path) -> SplitModel:
    from safetensors.torch import load_file
    directory = Path(directory)
    model = SplitModel.from_config(json.loads((directory / "split_config.json").read_text()))
    model.load_state_dict(load_file(str(directory / "split.safetensors")))
    return model.eval()
