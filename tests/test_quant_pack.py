"""Bit packing and the safetensors writer."""
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from quant import packing, safetensors_io


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 8), st.lists(st.integers(0, 255), min_size=1, max_size=300))
def test_pack_unpack_round_trip(bits, values):
    codes = torch.tensor(values, dtype=torch.int32) & ((1 << bits) - 1)
    buf = packing.pack(codes, bits)
    assert buf.dtype == np.uint8 and buf.size == packing.packed_nbytes(len(values), bits)
    assert torch.equal(packing.unpack(buf, bits, len(values)), codes)


def test_four_bit_codes_are_two_per_byte_low_nibble_first():
    assert packing.pack(torch.tensor([1, 2, 15, 0]), 4).tolist() == [0x21, 0x0F]


def test_six_bit_codes_take_three_bytes_per_four():
    assert packing.pack(torch.arange(8), 6).size == 6


def test_safetensors_files_open_with_the_reference_library(tmp_path):
    tensors = {"a.codes": np.arange(7, dtype=np.uint8), "a.scale": np.ones((3, 2), np.float16),
               "b": np.zeros((), np.float32)}
    safetensors_io.write(tmp_path / "t.safetensors", tensors)
    ref = load_file(str(tmp_path / "t.safetensors"))
    ours = safetensors_io.read(tmp_path / "t.safetensors")
    for k, v in tensors.items():
        assert np.array_equal(ref[k].reshape(v.shape), v) and ref[k].dtype == v.dtype
        assert np.array_equal(ours[k], v) and ours[k].shape == v.shape and ours[k].dtype == v.dtype
