"""Shrink an ONNX file's non-weight bytes: shape arithmetic that is static but for the batch
(runtimes.onnx.shapes), duplicate Constant nodes, node names, doc strings, long tensor names, value_info,
attributes spelled out at their schema default.

The TorchScript exporter names every tensor after its module path ("/blocks.0/attn/Reshape_1_output_0");
on a 12-block model of a few hundred kB those strings are a sizeable share of the file and hide what the
weights cost. Graph inputs, outputs and initializer names are kept, so the graph stays readable.
"""
from __future__ import annotations

from pathlib import Path

import onnx

from runtimes.onnx.shapes import fold_static_shapes


def compact(path: str | Path) -> None:
    """Rewrite `path` in place with short internal tensor names and no node names/doc strings."""
    m = onnx.load(str(path))
    if compact_model(m):
        onnx.checker.check_model(m, full_check=True)
        onnx.save(m, str(path))


def compact_model(m: onnx.ModelProto) -> bool:
    """`compact` on a model in memory (also for graphs whose weights go elsewhere, e.g. the stitch artifact's);
    False when the model has sub-graphs and was left as exported."""
    g = m.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return False  # sub-graphs capture outer names: leave such models as exported
    fold_static_shapes(m)
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
    _drop_default_attributes(m)
    del g.value_info[:]
    g.doc_string = ""
    m.doc_string = ""
    return True


def _drop_default_attributes(m: onnx.ModelProto) -> None:
    """Remove attributes equal to their schema default (axis=0, allowzero=0, approximate='none'...)."""
    opset = {o.domain: o.version for o in m.opset_import}
    cache: dict = {}
    for node in m.graph.node:
        if node.domain not in ("", "ai.onnx") or not node.attribute:
            continue
        key = node.op_type
        if key not in cache:
            try:
                schema = onnx.defs.get_schema(node.op_type, opset.get(node.domain, opset.get("", 1)), "")
                cache[key] = {a: v.default_value.SerializeToString() for a, v in schema.attributes.items()
                              if v.default_value.type != onnx.AttributeProto.UNDEFINED}
            except onnx.defs.SchemaError:
                cache[key] = {}
        defaults = cache[key]
        keep = []
        for a in node.attribute:
            d = defaults.get(a.name)
            probe = onnx.AttributeProto()
            probe.CopyFrom(a)
            probe.name, probe.doc_string = "", ""
            if d is None or probe.SerializeToString() != _default_as_named(d):
                keep.append(a)
        if len(keep) != len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(keep)


def _default_as_named(serialized: bytes) -> bytes:
    a = onnx.AttributeProto()
    a.ParseFromString(serialized)
    a.name, a.doc_string = "", ""
    return a.SerializeToString()
