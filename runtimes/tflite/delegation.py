"""Which ops of a .tflite XNNPACK takes, and which it leaves to LiteRT's builtin kernels.

A full-integer model is only as fast as its slowest partition boundary: every op XNNPACK refuses
splits the delegated graph and runs in the builtin kernels. The interpreter lists DELEGATE nodes
next to the original ops; an original op is delegated when it is reachable backwards from a
DELEGATE node's outputs without leaving that node's inputs.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from runtimes.tflite.interpreter import make_interpreter


def delegation_report(model: str | Path | bytes, threads: int = 1) -> dict:
    """{partitions, delegated_ops, builtin_ops: {op type: count}} for the default (XNNPACK) interpreter."""
    ops = make_interpreter(model, threads=threads)._get_ops_details()  # noqa: SLF001
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    original = [o for o in ops if o["op_name"] != "DELEGATE"]
    producer = {int(t): o for o in original for t in o["outputs"]}
    delegated: set[int] = set()
    for d in delegates:
        inputs = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in seen or t in inputs or t not in producer:
                continue
            seen.add(t)
            op = producer[t]
            delegated.add(int(op["index"]))
            stack.extend(int(i) for i in op["inputs"] if i >= 0)
    builtin = Counter(o["op_name"] for o in original if int(o["index"]) not in delegated)
    return {"partitions": len(delegates), "delegated_ops": len(delegated), "builtin_ops": dict(builtin)}
