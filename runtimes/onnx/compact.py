"""Shrink an ONNX file's non-weight bytes: duplicate Constant nodes, node names, doc strings, long tensor
names, value_info.

The TorchScript exporter names every tensor after its module path ("/blocks.0/attn/Reshape_1_output_0");
on a 12-block model of a few hundred kB those strings are a sizeable share of the file and hide what the
weights cost. Graph inputs, outputs and initializer names are kept, so the graph stays readable.
"""
from __future__ import annotations

from pathlib import Path

import onnx


def compact(path: str | Path) -> None:
    """Rewrite `path` in place with short internal tensor names and no node names/doc strings."""
    m = onnx.load(str(path))
    g = m.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return  # sub-graphs capture outer names: leave such models as exported
    keep = {v.name for v in (*g.input, *g.output)} | {i.name for i in g.initializer}
    rename: dict[str, str] = {}
    first: dict[bytes, str] = {}   # the exporter writes one Constant per use: keep one per distinct value
    nodes = []
    for node in g.node:
        if node.op_type == "Constant" and node.output[0] not in keep:
            key = b"".join(a.SerializeToString() for a in node.attribute)
            if key in first:
                rename[node.output[0]] = first[key]
                continue
            first[key] = node.output[0]
        nodes.append(node)
    for node in nodes:
        for i, inp in enumerate(node.input):
            if inp in rename:
                node.input[i] = rename[inp]
    del g.node[:]
    g.node.extend(nodes)
    rename = {}
    for node in g.node:
        node.name = ""
        node.doc_string = ""
        for i, out in enumerate(node.output):
            if out and out not in keep:
                rename[out] = rename.get(out) or f"t{len(rename)}"
                node.output[i] = rename[out]
        for i, inp in enumerate(node.input):
            if inp in rename:
                node.input[i] = rename[inp]
    del g.value_info[:]
    g.doc_string = ""
    m.doc_string = ""
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
