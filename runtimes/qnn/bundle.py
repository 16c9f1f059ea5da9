"""The QNN-ready QDQ ONNX: edgevit's own integer quantisation carried into encodings QNN HTP accepts.

QNN HTP wants every tensor quantised (8/16-bit activations, 4/8-bit symmetric weights, int32 biases),
static shapes and rank ≤ 4. onnxruntime's QNN recipe (`get_qnn_qdq_config` + `quantize`) writes such
a graph and knows the op-specific rules (fixed Softmax/Sigmoid encodings, 16-bit converts); what it
does not know is edgevit's quantisation. We hand it edgevit's numbers as tensor overrides:

- every quantised Linear/Conv weight — found by construction: exported as the graph input `<layer>.weight`
  (runtimes.onnx.quantized.export_weights_as_inputs), then made the initializer its op reads — its
  per-channel scales, with the float weight set to
  codes × scale, so the recipe's round(W / s) gives back exactly edgevit's codes (AdaRound/BRECQ
  rounding included; checked after the fact). INT2–4 codes ride in int4 storage, INT5–8 in int8;
- every static per-tensor input quantiser of those layers: its scale and zero point (uint8/uint16).

Tensors edgevit leaves float (LayerNorm internals, residual adds, attention scores) get min-max
encodings from calibration on the same images, at the activation width of edgevit's spec; the torch
reference returned rounds them too, where a module produces them (glue.py).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from runtimes.onnx.quantspec import QuantSpec, format_bits, spec_from_model
from runtimes.qnn.errors import QnnExportError

# precision → (weight bits, activation dtype) of the float-model path (edgevit quantises first)
PRECISIONS = {"w8a16": (8, "uint16"), "w8a8": (8, "uint8"), "w4a16": (4, "uint16")}
ACT_BITS = {"uint8": 8, "int8": 8, "uint16": 16, "int16": 16}
OPSET = 21   # standard QuantizeLinear/DequantizeLinear for 16-bit activations and int4 weights


@dataclass
class BundleInfo:
    """What build_qdq wrote and where each encoding came from."""
    float_path: Path
    qdq_path: Path
    precision: str
    activation_type: str
    weights: dict = field(default_factory=dict)       # initializer → {layer, bits, storage, axis}
    activations: dict = field(default_factory=dict)   # tensor → edgevit quantiser name
    conflicts: list = field(default_factory=list)     # tensors two edgevit quantisers claimed
    codes_exact: bool = False
    glue: dict = field(default_factory=dict)          # recipe encodings modelled in the torch reference

    def summary(self) -> dict:
        return {"weights_from_edgevit": len(self.weights), "activations_from_edgevit": len(self.activations),
                "activation_conflicts": self.conflicts, "weight_codes_exact": self.codes_exact,
                "other_activations": f"{self.activation_type}, min-max calibrated (onnxruntime QNN recipe)",
                "other_activations_in_reference": self.glue}


def is_quantized(model: nn.Module) -> bool:
    import quant
    return any(isinstance(m, quant.ActQuantizer) or getattr(m, "weight_quant", None) is not None
               for m in model.modules())


def edgevit_quantize(model: nn.Module, precision: str, calibration: np.ndarray) -> nn.Module:
    """A float model → quant/'s INT model (per-channel weights, static per-tensor activations)."""
    import quant
    if precision not in PRECISIONS:
        raise QnnExportError(f"QNN precision {precision!r}: use {', '.join(PRECISIONS)} "
                             "(or pass a model quantised with `edgevit quantize --fmt int`)")
    spec = quant.parse_spec("int", precision, None, ())
    return quant.quantize_model(model, spec, torch.from_numpy(np.ascontiguousarray(calibration, np.float32)))


def check_spec(spec: QuantSpec) -> str:
    """Refuse what QNN HTP cannot encode; return the widest activation dtype of the spec."""
    for name, lq in spec.layers.items():
        if not lq.fmt.startswith("int"):
            raise QnnExportError(f"layer {name}: {lq.fmt} weights have no QNN HTP encoding; quantise with --fmt int")
        if lq.zero_point is not None:
            raise QnnExportError(f"layer {name}: asymmetric weights; QNN HTP takes symmetric per-channel weights")
        if lq.scale.shape[1] != 1:
            raise QnnExportError(f"layer {name}: per-group weight scales ({lq.granularity}); QNN HTP takes "
                                 "per-channel weights: quantise with weight_granularity: channel")
    widest = None
    for name, aq in spec.acts.items():
        if aq.dynamic:
            raise QnnExportError(f"activation {name}: dynamic {aq.granularity} quantisation; QNN HTP needs static "
                                 "per-tensor activations (act_granularity: tensor)")
        if aq.fmt not in ACT_BITS:
            raise QnnExportError(f"activation {name}: {aq.fmt} has no QNN HTP encoding; use 8- or 16-bit INT "
                                 "activations (--bits w8a8, w8a16, w4a16)")
        if widest is None or ACT_BITS[aq.fmt] > ACT_BITS[widest]:
            widest = aq.fmt
    return widest or "uint16"


def _positive_scales(spec: QuantSpec) -> QuantSpec:
    """BN folding can make a channel's scale negative; QNN wants s > 0: flip that row's codes instead."""
    from runtimes.onnx.quantspec import LayerQuant
    layers = {}
    for name, lq in spec.layers.items():
        neg = lq.scale[:, 0] < 0
        if neg.any():
            q = lq.q.copy()
            q[neg] = -q[neg]
            lo = -(2 ** (format_bits(lq.fmt) - 1))
            if q.min() < lo:
                raise QnnExportError(f"layer {name}: a negative BatchNorm scale flips code {lo} out of range; "
                                     "fold BatchNorm before quantising (edgevit rewrite --target qnn-htp)")
            lq = LayerQuant(lq.fmt, q, np.abs(lq.scale), None, lq.scale_dtype, lq.group)
        layers[name] = lq
    return QuantSpec(spec.precision, layers, spec.acts)


@dataclass
class WeightSite:
    """Where a quantised layer's weight sits in the float graph: an initializer per orientation it is read
    in, (name, output-channel axis), and the activation each Conv/Gemm/MatMul reading it multiplies (the
    tensor its input quantiser's encoding belongs to). Both empty for a layer the forward never calls."""
    inits: list
    inputs: list


_MATMULS = ("Conv", "Gemm", "MatMul")


def weights_as_initializers(m: onnx.ModelProto, spec: QuantSpec) -> dict[str, WeightSite]:
    """Turn each graph input `<layer>.weight` (runtimes.onnx.quantized.export_weights_as_inputs) into an
    initializer read directly by its Conv/Gemm/MatMul, holding the dequantised weight in the orientation
    that op reads it (a Linear's Transpose folded in: output channels on axis 1).

    The weight is identified by construction, as in the ONNX exporter: whatever BatchNorm folding, Identity
    or Transpose the TorchScript exporter puts around it, and however many layers share equal weights.
    """
    from runtimes.onnx.quantized import _Graph, weight_input
    graph = _Graph(m)
    sites = {}
    for name, lq in spec.layers.items():
        source = weight_input(name)
        inp = next((i for i in m.graph.input if i.name == source), None)
        uses = graph.weight_uses(source, name) if inp is not None else []
        site = sites[name] = WeightSite([], [])
        if not uses:   # a layer the forward never calls (an unused auxiliary head): nothing to carry
            if inp is not None:
                m.graph.input.remove(inp)
            continue
        bad = [n for n, k, _ in uses if n.op_type not in _MATMULS or k != 1]
        if bad:
            raise QnnExportError(f"layer {name}: its weight feeds {bad[0].op_type} ({bad[0].name or 'unnamed'}), "
                                 "not a Conv/Gemm/MatMul weight input; QNN needs per-channel weights on those ops: "
                                 f"keep it float with `edgevit quantize ... --keep-float {name}`")
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        w = lq.dequantized().astype(np.float32).reshape(shape)
        made = {}
        for node, k, orient in uses:
            if orient not in made:
                init = source if not made else f"{source}.T"
                arr = w if orient == "as-is" else w.T
                m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), init))
                made[orient] = init
                site.inits.append((init, 0 if orient == "as-is" else 1))
            node.input[k] = made[orient]
            site.inputs.append(node.input[0])
        m.graph.input.remove(inp)
    graph.prune()
    _unshare_initializers(m)
    return sites


def _unshare_initializers(m: onnx.ModelProto) -> None:
    """Give each Identity of an initializer its own copy: the TorchScript exporter shares equal initializers
    that way (every folded bias of a random-init CNN is zeros), and onnxruntime's recipe would quantise such
    a bias as a 16-bit activation, not int32, which HTP refuses for the whole conv."""
    inits = {i.name: i for i in m.graph.initializer}
    outputs = {o.name for o in m.graph.output}
    for n in [n for n in m.graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        if n.output[0] in outputs:
            continue
        copy_ = onnx.TensorProto()
        copy_.CopyFrom(inits[n.input[0]])
        copy_.name = n.output[0]
        m.graph.initializer.append(copy_)
        m.graph.node.remove(n)


def overrides_for(sites: dict[str, WeightSite], spec: QuantSpec, info: BundleInfo) -> dict:
    """TensorQuantOverrides (onnxruntime's format) carrying edgevit's weight and activation encodings."""
    from onnxruntime.quantization import QuantType
    qtype = {"int8": QuantType.QInt8, "int4": QuantType.QInt4, "uint8": QuantType.QUInt8,
             "uint16": QuantType.QUInt16, "int16": QuantType.QInt16}
    overrides: dict[str, list[dict]] = {}
    for name, lq in spec.layers.items():
        site = sites[name]
        bits = format_bits(lq.fmt)
        storage = "int4" if bits <= 4 else "int8"
        for init, axis in site.inits:
            overrides[init] = [{"axis": axis, "scale": np.float32(s), "zero_point": 0, "quant_type": qtype[storage]}
                               for s in lq.scale[:, 0]]
            info.weights[init] = {"layer": name, "bits": bits, "storage": storage, "axis": axis}
        aq = spec.acts.get(f"{name}.input_quant")
        if aq is None:
            continue
        entry = {"scale": np.array(aq.scale, np.float32), "zero_point": np.array(aq.zero_point or 0, np.dtype(aq.fmt)),
                 "quant_type": qtype[aq.fmt]}
        for tensor in dict.fromkeys(site.inputs):   # a layer called twice: each call's input
            if tensor in overrides and (overrides[tensor][0]["scale"], overrides[tensor][0]["zero_point"]) != \
                    (entry["scale"], entry["zero_point"]):
                info.conflicts.append(tensor)   # first quantiser wins; both read the same tensor
                continue
            overrides[tensor] = [entry]
            info.activations[tensor] = f"{name}.input_quant"
    return overrides


def _layernorm_gammas(graph: onnx.GraphProto, overrides: dict) -> None:
    """LayerNormalization's scale (gamma) as uint8: HTP refuses the op with a signed 8-bit gamma next to 16-bit
    activations (validation error 3110, convnext_atto: 17 LayerNorms, 85 nodes left to CPU), and the recipe's
    default weight type here is int8, chosen for the Conv/MatMul weights edgevit does not override."""
    from onnxruntime.quantization import QuantType
    inits = {i.name for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "LayerNormalization" and len(n.input) > 1 and n.input[1] in inits \
                and n.input[1] not in overrides:
            overrides[n.input[1]] = [{"quant_type": QuantType.QUInt8}]


def _keep_activations(graph: onnx.GraphProto, overrides: dict) -> bool:
    """Whether onnxruntime must keep Relu/Clip nodes: its QDQ recipe drops them, trusting the output's
    encoding to clamp (true of a min-max one), which fails where an edgevit encoding of a Relu/Clip output
    reaches below the activation's floor (one input quantiser shared by a call after a Relu and one not)."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type not in ("Relu", "Clip") or n.output[0] not in overrides:
            continue
        e = overrides[n.output[0]][0]
        if "zero_point" not in e or np.ndim(e["scale"]) or np.dtype(e["zero_point"].dtype).kind != "u":
            continue
        floor = 0.0 if n.op_type == "Relu" or len(n.input) < 2 or n.input[1] not in inits else float(inits[n.input[1]])
        if -float(e["zero_point"]) * float(e["scale"]) < floor - float(e["scale"]) / 2:
            return True
    return False


def _reader(name: str, calibration: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: np.ascontiguousarray(x, np.float32)}
    return Reader()


def check_static(path: Path) -> None:
    """Every tensor of the float graph has a static shape of rank ≤ 4 (what QNN HTP compiles)."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    for v in [*m.graph.input, *m.graph.output, *m.graph.value_info]:
        dims = v.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise QnnExportError(f"tensor {v.name} has a dynamic shape; QNN needs static shapes "
                                 "(edgevit rewrite --target qnn-htp, static batch 1)")
        if len(dims) > 4:
            raise QnnExportError(f"tensor {v.name} has rank {len(dims)} > 4; run edgevit rewrite --target qnn-htp "
                                 "(conv-layout pass) before the QNN export")


def _codes_exact(qdq_path: Path, spec: QuantSpec, info: BundleInfo) -> bool:
    """The int initializers the recipe wrote equal edgevit's codes, layer by layer."""
    inits = {i.name: i for i in onnx.load(str(qdq_path)).graph.initializer}
    for init, w in info.weights.items():
        q = inits.get(f"{init}_quantized")
        if q is None:
            return False
        codes = numpy_helper.to_array(q).astype(np.int32)
        ref = spec.layers[w["layer"]].q.astype(np.int32)
        ref = ref.reshape(codes.shape) if w["axis"] == 0 else ref.reshape(codes.T.shape).T
        if not np.array_equal(codes, ref):
            return False
    return True


def build_qdq(model: nn.Module, input_shape: tuple[int, ...], out_dir: Path, calibration: np.ndarray,
              precision: str | None = None, float_name: str = "model.fp32.onnx",
              qdq_name: str = "model.qdq.onnx") -> tuple[nn.Module, BundleInfo]:
    """Write the float graph and the QNN QDQ graph of `model` into `out_dir`; returns (torch reference, info).

    `model` is either quantised by quant/ (its encodings are carried) or float, in which case it is
    quantised here at `precision` (w8a16 | w8a8 | w4a16) on `calibration` first. The torch reference
    returned is the fake-quant model the QDQ graph must agree with: edgevit's quantisers plus the
    recipe's encodings of the tensors in between (glue.py).
    """
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config
    from runtimes.onnx.quantized import export_weights_as_inputs, fold_batchnorm, float_twin
    from runtimes.onnx.shapes import fold_integer_constants, fold_static_shapes
    from runtimes.qnn.glue import with_glue
    calibration = np.ascontiguousarray(calibration, np.float32)
    if len(calibration) == 0:
        raise QnnExportError("the QNN export needs calibration images (--calib-data)")
    if not is_quantized(model):
        model = edgevit_quantize(model, precision or "w8a16", calibration)
    spec = unfolded = spec_from_model(model)
    act_type = check_spec(spec)
    shape = (1, *input_shape[1:])
    folded, spec = fold_batchnorm(model, spec, input_shape=shape)
    spec = _positive_scales(spec)
    info = BundleInfo(out_dir / float_name, out_dir / qdq_name, spec.precision, act_type)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "opset 21 not supported": the float ops used exist at 21 unchanged
        m = export_weights_as_inputs(float_twin(folded, spec), spec, shape, OPSET, dynamic_batch=False,
                                     workdir=out_dir)
    sites = weights_as_initializers(m, spec)
    while fold_static_shapes(m) + fold_integer_constants(m):   # the exporter's shape chains: static at batch 1
        pass
    onnx.save(m, str(info.float_path))
    check_static(info.float_path)
    graph = m.graph
    overrides = overrides_for(sites, spec, info)
    _layernorm_gammas(graph, overrides)
    qt = {"uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16, "int8": QuantType.QInt8,
          "int16": QuantType.QInt16}[act_type]
    with tempfile.TemporaryDirectory() as tmp, _quiet_logging():
        cfg = get_qnn_qdq_config(str(info.float_path), _reader(graph.input[0].name, calibration),
                                 activation_type=qt, weight_type=QuantType.QInt8, per_channel=True,
                                 init_overrides=overrides,
                                 keep_removable_activations=_keep_activations(graph, overrides))
        tmp_out = Path(tmp) / qdq_name
        quantize(str(info.float_path), str(tmp_out), cfg)
        tmp_out.replace(info.qdq_path)
    info.codes_exact = _codes_exact(info.qdq_path, spec, info)
    reference, glue = with_glue(model, float_twin(model, unfolded), info.float_path, info.qdq_path,
                                set(info.activations), calibration, set(unfolded.acts))
    info.glue = glue.summary()
    return reference, info


class _quiet_logging:
    """onnxruntime's quantiser warns 'please run pre-processing' through the root logger; not useful here."""

    def __enter__(self):
        import logging
        self.logger = logging.getLogger()
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
