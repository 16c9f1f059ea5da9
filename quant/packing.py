"""Bit packing of low-bit codes: n codes of `bits` bits → ceil(n·bits/8) bytes, little-endian bit order.

Code i occupies bits i·bits … (i+1)·bits−1 of the stream, least significant first, so 4-bit codes are
two per byte with the first in the low nibble (the layout ONNX INT4 uses) and 6-bit codes take 3 bytes
per 4 codes. Vectorised through numpy's packbits/unpackbits.
"""
from __future__ import annotations

import numpy as np
import torch


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> np.ndarray:
    """Flattened int codes (only their low `bits` bits are kept) → uint8 array."""
    if not 1 <= bits <= 8:
        raise ValueError(f"can pack 1-8 bit codes, not {bits}")
    c = codes.reshape(-1).to(torch.int32).numpy().astype(np.uint8) & np.uint8((1 << bits) - 1)
    if bits == 8:
        return c
    stream = np.unpackbits(c[:, None], axis=1, count=bits, bitorder="little")
    return np.packbits(stream.reshape(-1), bitorder="little")


def unpack(buf: np.ndarray, bits: int, n: int) -> torch.Tensor:
    """uint8 array → the first n codes as an int32 tensor (the inverse of `pack`)."""
    buf = np.asarray(buf, dtype=np.uint8).reshape(-1)
    if buf.size != packed_nbytes(n, bits):
        raise ValueError(f"{buf.size} bytes cannot hold exactly {n} codes of {bits} bits")
    if bits == 8:
        return torch.from_numpy(buf.astype(np.int32))
    stream = np.unpackbits(buf, bitorder="little")[: n * bits].reshape(n, bits)
    return torch.from_numpy(np.packbits(stream, axis=1, bitorder="little")[:, 0].astype(np.int32))
