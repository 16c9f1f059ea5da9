"""A minimal reader/writer of the safetensors format (8-byte header length, JSON header, raw bytes).

quant depends on torch and numpy only; the files it writes are ordinary safetensors that the
`safetensors` package (and every runtime tool that reads it) opens.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

DTYPES = {"U8": np.uint8, "F16": np.float16, "F32": np.float32, "I32": np.int32, "I64": np.int64,
          "BOOL": np.bool_, "F64": np.float64}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def write(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` (C-contiguous numpy arrays) to `path`; returns the file size in bytes."""
    raw, blobs = _serialise(tensors, metadata)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    return 8 + len(raw) + sum(len(b) for b in blobs)


def file_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> int:
    """The exact size `write` would give the file, without writing it (budgets promise file sizes)."""
    raw, blobs = _serialise(tensors, metadata)
    return 8 + len(raw) + sum(len(b) for b in blobs)


def entry_bytes(name: str, arr: np.ndarray, offset_digits: int) -> int:
    """An upper bound on what one tensor adds to a file: its data plus its header entry and comma, with both
    data offsets written with `offset_digits` digits (the file's offsets have at most that many)."""
    arr = np.asarray(arr)
    entry = {name: {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [0, 0]}}
    return arr.nbytes + len(json.dumps(entry, separators=(",", ":"))) - 2 + 1 + 2 * (offset_digits - 1)


def _serialise(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> tuple[bytes, list[bytes]]:
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        arr = arr if arr.flags.c_contiguous else arr.copy(order="C")   # (ascontiguousarray makes 0-d 1-d)
        if arr.dtype not in _NAMES:
            raise ValueError(f"{name}: dtype {arr.dtype} is not storable")
        data = arr.tobytes()
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return raw, blobs


def read(path: str | Path) -> dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path} is too short to be a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} has a corrupt safetensors header") from e
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if base + end > len(data):
            raise ValueError(f"{path} is truncated ({name} runs past the end)")
        out[name] = np.frombuffer(data[base + start:base + end], dtype=DTYPES[info["dtype"]]).reshape(tuple(info["shape"])).copy()
    return out
