"""Model-local ONNX functions: one definition per quantiser kind, one call node per site.

A dynamic activation quantiser is 10-20 ops and a packed-weight decoder about 10, each with its own
constants; written out at every site they were a fifth of a W4 ViT file. As FunctionProtos in the
`edgevit` domain, each kind (format, granularity, axis; weight format, orientation) is written once
and every site is a single node naming it. onnxruntime inlines local functions when it loads the model,
so the executed graph and its numerics are the ones the inline form had.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

DOMAIN = "edgevit"
_SUFFIXES = ("_i", "_f", "_s", "_t")


class Body:
    """Collects the nodes of one function body; `op` takes the TorchScript exporter's `g.op` arguments
    (attribute names with type suffixes, Constant `value_t`), so the same emitter writes either."""

    def __init__(self, inputs: list[str]):
        self.inputs = list(inputs)
        self.nodes: list[onnx.NodeProto] = []
        self.n = 0
        self.domains: set[str] = set()   # operator domains besides ONNX's own that the body calls

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        domain, _, op_type = op_type.rpartition("::")   # the exporter's spelling: "com.microsoft::Op"
        if domain:
            self.domains.add(domain)
        self.n += 1
        out = f"v{self.n}"
        clean = {}
        for k, v in attrs.items():
            k = k[:-2] if k.endswith(_SUFFIXES) else k
            if hasattr(v, "detach"):   # torch tensor (value_t of a Constant)
                v = v.detach().cpu().numpy()
            clean[k] = numpy_helper.from_array(np.asarray(v)) if isinstance(v, np.ndarray) else v
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], domain=domain or None, **clean))
        return out

    def const(self, value, dtype=np.float32) -> str:
        return self.op("Constant", value_t=np.asarray(value, dtype))

    def function(self, name: str, output: str, opset: int) -> onnx.FunctionProto:
        imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in sorted(self.domains)]
        return helper.make_function(DOMAIN, name, self.inputs, [output], self.nodes, imports)


def attach(model: onnx.ModelProto, functions: dict[str, onnx.FunctionProto]) -> None:
    """Add the functions the graph calls (and the opset imports of the domains they use) to `model`."""
    used = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    missing = used - set(functions)
    if missing:
        raise ValueError(f"graph calls undefined functions {sorted(missing)}")
    model.functions.extend(functions[k] for k in sorted(used))
    have = {o.domain for o in model.opset_import}
    for domain in sorted(({DOMAIN} if used else set()) | {o.domain for k in used for o in functions[k].opset_import}):
        if domain not in have:
            model.opset_import.append(helper.make_opsetid(domain, 1))
