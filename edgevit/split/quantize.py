"""`--bits`: post-training quantisation of a distilled split, one sub-model at a time.

Each sub-model is quantised by quant/ after distillation (its weights are final by then) and calibrated
on its *own* images — half from its class subset, half from the rest, the mix it was distilled to tell
apart — because its activation ranges are shaped by that task, not by the full model's. The fusion head,
when asked for, is calibrated on the quantised sub-models' outputs for the fusion images, i.e. on exactly
the features it will see at run time. The result is still a `SplitModel` (fake-quant torch modules), the
reference the quantised ONNX files must match.
"""
from __future__ import annotations

import torch

from edgevit.split.distill import batched
from edgevit.split.model import SplitModel, SplitQuant
from edgevit.split.prune import scoring_sample

__all__ = ["SplitQuant", "quantize_split"]


def quantize_split(split: SplitModel, q: SplitQuant, x: torch.Tensor, y: torch.Tensor, x_fusion: torch.Tensor,
                   seed: int = 0) -> SplitModel:
    """A copy of `split` whose sub-models (and optionally fusion head) are quant/ fake-quant modules."""
    import quant
    spec = q.spec()
    gen = torch.Generator().manual_seed(seed)
    subs = []
    for sub, subset in zip(split.subs, split.subsets):
        idx = scoring_sample(y, torch.tensor(subset), q.calib_images, gen)
        subs.append(quant.quantize_model(sub, spec, x[idx]))
    fusion = split.fusion
    if q.fusion:
        feats = torch.cat([batched(s, x_fusion) for s in subs], dim=-1)
        fusion = quant.quantize_model(split.fusion, spec, feats)
    return SplitModel(subs, split.subsets, fusion, q.to_dict()).eval()
