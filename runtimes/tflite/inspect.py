"""What a .tflite file really computes in: the dtype of every op's tensors, read from the interpreter.

The quantizer's own report says what it *tried* to quantise; the interpreter's tensor table says what
the kernels will actually get. An op counts as integer when none of its input/output tensors is a float.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from runtimes.errors import ExportError
from runtimes.tflite.interpreter import make_interpreter

_FLOATS = (np.float32, np.float16, np.float64)


def op_dtypes(model: str | Path | bytes) -> list[dict]:
    """One row per op, in execution order: {op, index, inputs: [dtype names], outputs: [dtype names]}."""
    it = make_interpreter(model, delegates=False)
    dtype = {d["index"]: d["dtype"] for d in it.get_tensor_details()}
    rows = []
    for op in it._get_ops_details():  # noqa: SLF001 — the interpreter's only per-op listing
        ins = [np.dtype(dtype[i]).name for i in op["inputs"] if i >= 0 and i in dtype]
        outs = [np.dtype(dtype[i]).name for i in op["outputs"] if i >= 0 and i in dtype]
        rows.append({"op": op["op_name"], "index": int(op["index"]), "inputs": ins, "outputs": outs})
    return rows


def integer_report(model: str | Path | bytes) -> dict:
    """Counts of ops and tensor dtypes, plus every op that still touches a float tensor."""
    rows = op_dtypes(model)
    floats = [r for r in rows if any(np.dtype(t).type in _FLOATS for t in r["inputs"] + r["outputs"])]
    return {"ops": len(rows), "op_types": dict(Counter(r["op"] for r in rows)),
            "tensor_dtypes": dict(Counter(t for r in rows for t in r["inputs"] + r["outputs"])),
            "float_ops": [f"{r['op']}#{r['index']}" for r in floats]}


def check_integer(model: str | Path | bytes, what: str = "model") -> dict:
    """integer_report, raising ExportError when any op computes in float."""
    rep = integer_report(model)
    if rep["float_ops"]:
        shown = ", ".join(rep["float_ops"][:5]) + (" ..." if len(rep["float_ops"]) > 5 else "")
        raise ExportError(f"{what}: {len(rep['float_ops'])} of {rep['ops']} ops still compute in float "
                          f"({shown}); the quantizer could not quantise them — rewrite those ops or export fp32")
    return rep
