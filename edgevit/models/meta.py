"""What travels with every model through the stages: its preprocessing, labels, origin and history."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgevit.data.preprocess import Preprocess

IMAGENET_PREPROCESS = Preprocess(size=224, channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclass
class ModelMeta:
    """What every stage passes along with the module: how to feed it and what came before."""
    name: str
    preprocess: Preprocess
    labels: tuple[str, ...]
    source: str                      # bundled | imagenet | timm | user
    family: str = ""
    description: str = ""
    history: list[dict] = field(default_factory=list)   # one entry per stage applied

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.preprocess.channels, self.preprocess.size, self.preprocess.size)

    def with_stage(self, stage: str, **info) -> "ModelMeta":
        """A copy with one more history entry; stages return it with their module."""
        return replace(self, history=[*self.history, {"stage": stage, **info}])

    def to_dict(self) -> dict:
        return {"name": self.name, "preprocess": self.preprocess.to_dict(), "labels": list(self.labels),
                "source": self.source, "family": self.family, "description": self.description,
                "history": self.history}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        return cls(d["name"], Preprocess.from_dict(d["preprocess"]), tuple(d["labels"]), d["source"],
                   d.get("family", ""), d.get("description", ""), list(d.get("history", [])))
