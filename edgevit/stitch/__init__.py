"""Stitchable Neural Networks (SN-Net, SN-Netv2): one family of anchors, many accuracy/latency points.

space     — configuration enumeration (paired stitching, two-way stitching) and its closed-form count
model     — StitchedModel: shared anchors + stitching layers, `set_config` switches the route
init      — least-squares initialisation of the stitching layers on real activations
train     — joint training with uniform or FLOPs-grouped configuration sampling, optional LoRA/KD
evaluate  — every configuration's top-1 and MACs, the Pareto frontier, budgeted selection, the plot
export    — the artifact: shared weights once + per-configuration ONNX graphs, ORT latency, manifest
pipeline  — `edgevit stitch` end to end, and `load_stitched` for run-time switching in torch
"""
from edgevit.stitch.model import ConfigView, StitchedModel
from edgevit.stitch.space import count_configs, count_paired, enumerate_configs, paired_positions

__all__ = ["StitchedModel", "ConfigView", "enumerate_configs", "paired_positions", "count_paired", "count_configs"]
