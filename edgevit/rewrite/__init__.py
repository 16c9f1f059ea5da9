"""NPU-friendly rewriting (AutoNeural): equivalence-checked passes, an op-support checker against
per-target rule tables (plus the real QNN compiler), a quantisation-robustness report (quant/ INT PTQ),
and `--distill conv`: a MobileNetV5-style conv student distilled from the ViT (student.py, distill.py,
distill_stage.py, compare.py)."""
from edgevit.rewrite.passes import PASS_NAMES, PASSES
from edgevit.rewrite.pipeline import max_rel_err, rewrite_model
from edgevit.rewrite.targets import load_target, target_names

__all__ = ["PASSES", "PASS_NAMES", "rewrite_model", "max_rel_err", "load_target", "target_names"]
