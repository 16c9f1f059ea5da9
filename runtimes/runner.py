"""Open an artifact for execution, whatever its runtime: `open_runner(artifact).run(x) -> logits`.

Runtimes register a factory by name; importing the runtime's package happens only when an artifact of
that kind is opened, so a device needs only the runtime it uses.
"""
from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from runtimes.artifact import Artifact, load_artifact
from runtimes.errors import RuntimeArtifactError

RUNNERS = {"onnx": "runtimes.onnx.runner:OnnxRunner", "tflite": "runtimes.tflite.runner:TfliteRunner",
           "qnn": "runtimes.qnn.runner:QnnRunner"}


class Runner(Protocol):
    threads: int

    def run(self, x: np.ndarray) -> np.ndarray: ...


def open_runner(artifact: Artifact | str, threads: int = 1, **options) -> Runner:
    """A runner for `artifact` (a path is loaded and verified first)."""
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    target = RUNNERS.get(artifact.runtime)
    if target is None:
        raise RuntimeArtifactError(f"no executor for {artifact.runtime!r} artifacts here; "
                                   f"this install runs {', '.join(RUNNERS)}")
    mod, _, cls = target.partition(":")
    try:
        factory = getattr(importlib.import_module(mod), cls)
    except ImportError as e:
        raise RuntimeArtifactError(f"{artifact.runtime} artifacts need {e.name}; install it first") from e
    return factory(artifact, threads=threads, **options)


def run_batched(runner: Runner, x: np.ndarray, batch_size: int = 1) -> np.ndarray:
    """Run `x` through the runner in batches (batch 1 for static-shape artifacts)."""
    return np.concatenate([runner.run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def top_k(logits: np.ndarray, labels: list[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """Softmax top-k (label, probability) per row."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    idx = np.argsort(-p, axis=-1)[:, :k]
    name = (lambda i: labels[i] if i < len(labels) else f"class_{i}")
    return [[(name(int(i)), float(p[r, i])) for i in row] for r, row in enumerate(idx)]
