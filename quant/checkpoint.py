"""Packed quantised checkpoints: a directory with `weights.safetensors` + `quant.json`.

weights.safetensors holds, per quantised weight, `<layer>.weight.codes` (uint8, codes bit-packed
at the format's width) and `<layer>.weight.scale` (float16, float32 where fp16 would lose
precision, or `<layer>.weight.scale_e8m0` uint8 for MX); every other tensor of the quantised
model (biases, norms, embeddings, activation scales/zero points, keep-float layers) as float32.
quant.json holds the spec, the per-layer plan and descriptors, sizes, and the caller's `model`
dict (so the caller can rebuild the float architecture). Directories appear atomically.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quant import packing, safetensors_io
from quant.errors import SpecError
from quant.formats import MxFormat
from quant.modules import quantized_layers
from quant.ptq import LayerPlan, apply_plan
from quant.spec import QuantSpec

WEIGHTS_FILE, CONFIG_FILE, FORMAT_VERSION = "weights.safetensors", "quant.json", 1
_SCALE_BYTES = {"float16": 2, "float32": 4, "e8m0": 1}


def _tensors(qmodel: nn.Module) -> tuple[dict[str, np.ndarray], dict[str, dict], dict[str, int]]:
    tensors, layers = {}, {}
    ideal = {"codes": 0, "scales": 0, "float": 0}
    skip = set()
    for name, m in quantized_layers(qmodel):
        entry = qmodel.quant_plan[name].to_dict()
        wq = getattr(m, "weight_quant", None)
        if wq is not None:
            codes = wq.codes(m.weight)
            tensors[f"{name}.weight.codes"] = packing.pack(codes, wq.fmt.code_bits)
            if isinstance(wq.fmt, MxFormat):
                exps = torch.frexp(wq.scale)[1] - 1
                tensors[f"{name}.weight.scale_e8m0"] = (exps + 127).to(torch.uint8).numpy()
            else:
                tensors[f"{name}.weight.scale"] = wq.scale.numpy().astype(wq.scale_dtype)
            entry |= {"weight_shape": list(m.weight.shape), "scale": wq.describe()["scale"]}
            ideal["codes"] += codes.numel() * wq.fmt.code_bits / 8
            ideal["scales"] += wq.scale.numel() * _SCALE_BYTES[wq.describe()["scale"]]
            skip |= {f"{name}.weight", f"{name}.weight_quant.scale"}
        layers[name] = entry
    for key, t in qmodel.state_dict().items():
        if key in skip:
            continue
        arr = t.detach().cpu().numpy()
        tensors[key] = arr.astype(np.float32) if t.is_floating_point() else arr
        ideal["float"] += arr.size * (4 if t.is_floating_point() else arr.itemsize)
    return tensors, layers, ideal


def _dedupe_configs(layers: dict[str, dict]) -> tuple[list[dict], dict[str, dict]]:
    """Tensor configs repeat across layers: store each once and refer to it by index."""
    table: list[dict] = []
    out = {}
    for name, entry in layers.items():
        e = dict(entry)
        for role in ("weight", "act", "softmax"):
            if e.get(role) is not None:
                if e[role] not in table:
                    table.append(e[role])
                e[role] = table.index(e[role])
        out[name] = e
    return table, out


def _expand_configs(cfg: dict) -> dict[str, dict]:
    table = cfg.get("configs", [])
    return {name: {**e, **{r: table[e[r]] for r in ("weight", "act", "softmax") if isinstance(e.get(r), int)}}
            for name, e in cfg["layers"].items()}


WEIGHTS_METADATA = {"format": "edgevit-quant"}


def checkpoint_tensors(qmodel: nn.Module) -> dict[str, np.ndarray]:
    """The tensors `write_quantized` stores for `qmodel`, by name (packed codes, scales, float tensors)."""
    return _tensors(qmodel)[0]


def weights_file_bytes(qmodel: nn.Module) -> int:
    """The exact size of the weights.safetensors `write_quantized` writes for `qmodel`."""
    return safetensors_io.file_bytes(checkpoint_tensors(qmodel), WEIGHTS_METADATA)


def write_quantized(qmodel: nn.Module, directory: str | Path, model_info: dict | None = None) -> dict:
    """Write the checkpoint files into an existing directory; returns the size summary."""
    if not hasattr(qmodel, "quant_plan"):
        raise SpecError("not a quantised model: make it with quant.quantize_model or quant.load_quantized")
    directory = Path(directory)
    tensors, layers, ideal = _tensors(qmodel)
    nbytes = safetensors_io.write(directory / WEIGHTS_FILE, tensors, WEIGHTS_METADATA)
    ideal_total = int(sum(ideal.values()))
    sizes = {"weights_file_bytes": nbytes, "ideal_bytes": ideal_total,
             "ideal_breakdown": {k: int(v) for k, v in ideal.items()}, "overhead_vs_ideal": nbytes / ideal_total - 1}
    configs, layers = _dedupe_configs(layers)
    config = {"format": "edgevit-quant", "version": FORMAT_VERSION, "spec": qmodel.quant_spec.to_dict(),
              "configs": configs, "layers": layers, "model": model_info or {}, "sizes": sizes}
    (directory / CONFIG_FILE).write_text(json.dumps(config, separators=(",", ":")))
    return sizes


def save_quantized(qmodel: nn.Module, path: str | Path, model_info: dict | None = None, force: bool = False,
                   extra_files=None) -> dict:
    """Write the checkpoint (plus `extra_files`) to directory `path` atomically: built in a temp dir
    beside it and renamed into place; an existing non-empty `path` is replaced only with force.

    extra_files: {name: str | bytes}, or a function of the size summary returning that (so a report
    can state the checkpoint's own size and still land atomically with it)."""
    path = Path(path)
    check_out_dir(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    try:
        sizes = write_quantized(qmodel, tmp, model_info)
        sizes["total_bytes"] = directory_size(tmp)
        extra = extra_files(sizes) if callable(extra_files) else (extra_files or {})
        for name, content in extra.items():
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return sizes


def check_out_dir(path: str | Path, force: bool) -> None:
    """Refuse a non-empty existing output unless forced (call it before doing any work)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not force)):
        raise SpecError(f"{path} exists and is not empty; choose another --out or pass --overwrite to replace it")


def directory_size(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def read_config(path: str | Path) -> dict:
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise SpecError(f"{path} is not a quantised checkpoint (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise SpecError(f"{cfg_file} is not valid JSON ({e}); re-run the quantisation") from e
    if cfg.get("format") != "edgevit-quant" or cfg.get("version") != FORMAT_VERSION:
        raise SpecError(f"{cfg_file} is not a version-{FORMAT_VERSION} edgevit-quant checkpoint")
    return cfg


@torch.no_grad()
def load_quantized(path: str | Path, float_model: nn.Module) -> nn.Module:
    """Rebuild the quantised model on a copy of `float_model` (same architecture) from a checkpoint;
    the result computes exactly what the saved model computed."""
    cfg = read_config(path)
    try:
        tensors = safetensors_io.read(Path(path) / WEIGHTS_FILE)
    except ValueError as e:
        raise SpecError(str(e)) from e
    try:
        layers = _expand_configs(cfg)
        plan = {name: LayerPlan.from_dict(d) for name, d in layers.items()}
    except (KeyError, IndexError, TypeError) as e:
        raise SpecError(f"{path}/{CONFIG_FILE} has a corrupt layer table ({e!r})") from e
    qmodel = copy.deepcopy(float_model).eval()
    for p in qmodel.parameters():
        p.requires_grad_(False)
    apply_plan(qmodel, plan)
    qmodel.quant_plan = plan
    qmodel.quant_spec = QuantSpec.from_dict(cfg["spec"])
    state = {}
    for name, m in quantized_layers(qmodel):
        wq = getattr(m, "weight_quant", None)
        if wq is None:
            continue
        if list(m.weight.shape) != layers[name].get("weight_shape"):
            raise SpecError(f"{name}: checkpoint weight shape {layers[name].get('weight_shape')} does not "
                            f"match the model's {list(m.weight.shape)}; load it onto the architecture it was made from")
        try:
            if isinstance(wq.fmt, MxFormat):
                exps = torch.from_numpy(tensors[f"{name}.weight.scale_e8m0"].astype(np.int32)) - 127
                scale = torch.ldexp(torch.ones(exps.shape), exps)
            else:
                scale = torch.from_numpy(tensors[f"{name}.weight.scale"].astype(np.float32))
                wq.scale_dtype = str(tensors[f"{name}.weight.scale"].dtype)
            codes = packing.unpack(tensors[f"{name}.weight.codes"], wq.fmt.code_bits, m.weight.numel())
        except (KeyError, ValueError) as e:
            raise SpecError(f"{path}: weights for {name} are missing or corrupt ({e})") from e
        wq.scale.copy_(scale.reshape(wq.scale.shape))
        m.weight.copy_(wq.dequantize(codes.reshape(m.weight.shape)))
        state[f"{name}.weight"] = m.weight
        state[f"{name}.weight_quant.scale"] = wq.scale
    own = qmodel.state_dict()
    for key in own:
        if key in state:
            continue
        if key not in tensors:
            raise SpecError(f"{path} lacks tensor {key}; it was made for another architecture")
        state[key] = torch.from_numpy(tensors[key]).to(own[key].dtype).reshape(own[key].shape)
    qmodel.load_state_dict(state)
    return qmodel
