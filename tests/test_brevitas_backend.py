"""brevitas backend: spec mapping, refusal of what brevitas cannot express, conversion back to edgevit."""
import pytest
import torch

import quant
from edgevit.models.vit import VisionTransformer

brevitas = pytest.importorskip("brevitas")
from edgevit.backends import brevitas_backend as bb  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return VisionTransformer(embed_dim=32, depth=2, num_heads=2).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_unsupported_specs_name_the_recipe_fix():
    with pytest.raises(bb.Unsupported, match="act_granularity: tensor"):
        bb.check_available(quant.parse_spec("fp4", "w4a6", {"weight_granularity": "channel"}), "rtn")
    with pytest.raises(bb.Unsupported, match="weight_granularity: channel"):
        bb.check_available(quant.parse_spec("fp4", "w4a6", {"act_granularity": "tensor"}), "rtn")
    with pytest.raises(bb.UsageError, match="adaround"):
        bb.check_available(quant.parse_spec("int", "w8a8"), "brecq")


@pytest.mark.parametrize("fmt,bits,recipe", [("int", "w8a8", None),
                                             ("fp4", "w4a8", {"weight_granularity": "channel", "act_granularity": "tensor"})])
def test_converted_model_carries_brevitas_weights_on_edgevit_grid(vit, x, fmt, bits, recipe):
    spec = quant.parse_spec(fmt, bits, recipe)
    q, rep = bb.quantize(vit, spec, x, method="rtn", keep_brevitas=True)
    bmodel = rep.pop("brevitas_model")
    bq = dict(bmodel.named_modules())
    for name, m in quant.quantized_layers(q):
        if getattr(m, "weight_quant", None) is None:
            continue
        wb = bq[name].quant_weight().value
        assert torch.allclose(m.qweight(), wb, rtol=1e-3, atol=1e-6), name      # brevitas' values ...
        assert torch.equal(m.weight_quant.grid_fmt.round(m.weight_quant.grid_values(m.weight)),
                           m.weight_quant.grid_values(m.weight))                 # ... on edgevit's grid
    with torch.no_grad():
        assert quant.sqnr_db(bmodel(x), q(x)) > 20


def test_qcdq_export_writes_onnx_or_says_why(vit, x):
    q, rep = bb.quantize(vit, quant.parse_spec("int", "w8a8"), x, keep_brevitas=True)
    files, note = bb.qcdq_file(rep["brevitas_model"], x[:1])
    assert (note in files) or note.startswith("not written: ")
