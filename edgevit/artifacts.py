"""The export stage: a model (a registry name, a quantised checkpoint directory, or a module + ModelMeta) to a
parity-checked runtime artifact, and the checks run on artifacts afterwards.

`edgevit export`, `edgevit check-parity` and `edgevit pipeline`'s export stage call these; the runtimes/
packages do the per-runtime work. Errors are edgevit's: UsageError for bad input (exit 2 at the CLI),
StageError for a model that cannot be exported or disagrees with its runtime (exit 1).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np

from edgevit.errors import StageError, UsageError

RUNTIMES = ("onnx", "tflite", "qnn")
DEFAULT_PRECISION = {"onnx": "fp32", "tflite": "fp32", "qnn": "w8a16"}
Status = Callable[[str], ContextManager]   # e.g. rich's console.status: a spinner around a long step


@contextlib.contextmanager
def runtime_errors():
    """runtimes/ errors as edgevit's: a bad artifact or an unexportable request is bad input, a parity
    failure is the stage failing."""
    from runtimes.errors import ExportError, ExportFailure, ParityError, RuntimeArtifactError
    try:
        yield
    except ExportFailure as e:   # a valid model the exporter cannot express: names the layer and the fallback
        raise StageError(str(e)) from e
    except (RuntimeArtifactError, ExportError) as e:
        raise UsageError(str(e)) from e
    except ParityError as e:
        raise StageError(str(e)) from e


def _quiet(_: str) -> ContextManager:
    return contextlib.nullcontext()


def is_checkpoint(model) -> bool:
    return isinstance(model, (str, Path)) and Path(model).is_dir()


def load_any(model: str, weights: str | None = None, trust_checkpoint: bool = False):
    """(torch reference, ModelMeta, quant spec or None, reload info) for a model name or a quantised checkpoint dir."""
    if is_checkpoint(model):
        from edgevit.ptq import load_checkpoint
        from runtimes.onnx.quantspec import spec_from_model
        qmodel, meta = load_checkpoint(model)
        with runtime_errors():
            spec = spec_from_model(qmodel)
        return qmodel, meta, spec, {"kind": "quantized", "path": str(Path(model).resolve())}
    from edgevit.models.registry import load_model
    module, meta = load_model(model, weights, trust_checkpoint)
    reload = {"kind": "registry", "name": model, "weights": str(Path(weights).resolve()) if weights else None}
    return module, meta, None, reload


def parity_data(spec: str, meta, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Preprocessed test images (and labels when they are the model's classes) for a data spec; `auto`
    follows the model (edgevit.data.resolve_data_spec)."""
    from edgevit.data import load_data, parse_data_spec, resolve_data_spec
    x, y = load_data(parse_data_spec(resolve_data_spec(spec, meta.preprocess)), meta.preprocess, split="test",
                     seed=seed)
    if y is not None and len(meta.labels) < int(y.max()) + 1:
        y = None  # the data's labels are not this model's classes: agreement only
    return x.numpy(), (y.numpy() if y is not None else None)


def check_request(runtime: str, precision: str | None = None, weight_scales: str = "minmax",
                  soc: tuple[str, ...] = ("SM8650",), graph_form: str = "exact", quantized: bool = False) -> str:
    """Reject a bad export request before any work; returns the precision to export at."""
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "onnx" and precision not in (None, "fp32"):
        raise UsageError("ONNX precision comes from the quantised checkpoint: run `edgevit quantize` and export its directory")
    if runtime != "tflite" and weight_scales != "minmax":
        raise UsageError("--weight-scales applies to --runtime tflite")
    if graph_form in ("integer", "float-matmul") and not quantized:
        raise UsageError(f"--graph-form {graph_form} needs a quantised checkpoint; run `edgevit quantize` first")
    if runtime == "qnn":
        from runtimes.qnn.compile import parse_soc
        from runtimes.qnn.errors import require_qnn
        with runtime_errors():
            for s in soc:
                parse_soc(s)
            require_qnn()
    return precision or DEFAULT_PRECISION[runtime]


def export_model(module, meta, spec, out: str | Path, runtime: str, precision: str, x: np.ndarray,
                 common: dict, *, seed: int = 0, opset: int | None = None, static_batch: bool = False,
                 graph_form: str = "exact", calib_data: str = "auto:256", soc: tuple[str, ...] = ("SM8650",),
                 parity_images: int = 16, weight_scales: str = "minmax", status: Status = _quiet):
    """One artifact of `module` (a quantised model with its `spec`, or a float one) at `out`, parity-checked on
    `x`; `common` holds the manifest fields (input shape, preprocessing, labels, parity inputs/labels, model info).
    The one export path of the CLI and the pipeline."""
    import torch

    from edgevit.data import calibration_tensor, resolve_data_spec
    calib_data = resolve_data_spec(calib_data, meta.preprocess)
    with runtime_errors():
        if runtime == "onnx":
            from runtimes.onnx.artifact import export_onnx_artifact
            calib = calibration_tensor(calib_data, meta.preprocess, seed).numpy() if graph_form == "integer" else None
            with status(f"exporting {meta.name} to ONNX and checking parity on {len(x)} images"):
                return export_onnx_artifact(module, out, quant_spec=spec, opset=opset, dynamic_batch=not static_batch,
                                            graph_form=graph_form, calib_inputs=calib, **common)
        if runtime == "tflite":   # litert-torch cannot trace fake-quant modules: a quantised model goes as its float twin
            from runtimes.onnx.quantized import float_twin
            from runtimes.tflite.artifact import export_tflite_artifact
            model = float_twin(module, spec) if spec is not None else module
            calib = calibration_tensor(calib_data, meta.preprocess, seed).numpy() if precision != "fp32" else None
            with status(f"converting {meta.name} to TFLite ({precision}) and checking parity"):
                return export_tflite_artifact(model, out, precision=precision, calibration=calib,
                                              calibration_data=calib_data, weight_scales=weight_scales, **common)
        from runtimes.qnn.artifact import export_qnn_artifact
        if spec is None:   # a float model is made NPU-native first (ViTs need it; CNNs get BN folded)
            from edgevit.rewrite import load_target, rewrite_model
            with status(f"rewriting {meta.name} for qnn-htp"):
                module, _ = rewrite_model(module, load_target("qnn-htp"), torch.from_numpy(x[:32]),
                                          (1, *meta.input_shape[1:]))
        calib = calibration_tensor(calib_data, meta.preprocess, seed).numpy()
        with status(f"building the QNN bundle ({precision}), compiling for {', '.join(soc)}, emulator parity"):
            return export_qnn_artifact(module, out, calibration=calib, calibration_data=calib_data,
                                       precision=precision, socs=tuple(soc), parity_images=parity_images, **common)


def export(model, out: str | Path, runtime: str = "onnx", *, weights: str | None = None,
           trust_checkpoint: bool = False, parity_data_spec: str = "auto:512", seed: int = 0,
           opset: int | None = None, static_batch: bool = False, graph_form: str = "exact",
           calib_data: str = "auto:256", precision: str | None = None, soc: tuple[str, ...] = ("SM8650",),
           parity_images: int = 16, weight_scales: str = "minmax", overwrite: bool = False,
           status: Status = _quiet):
    """Export `model` — a registry name (`vit-small`, `timm:ARCH`, …) or a directory written by
    `edgevit quantize` — as a `runtime` artifact at `out`, parity-checked on real images first; returns the
    runtimes.artifact.Artifact. Nothing is written when a check fails (`overwrite` replaces an existing `out`)."""
    from edgevit.version import __version__
    from edgevit.data import parse_data_spec, resolve_data_spec
    from runtimes.artifact import check_destination
    precision = check_request(runtime, precision, weight_scales, tuple(soc), graph_form, is_checkpoint(model))
    parse_data_spec(parity_data_spec), parse_data_spec(calib_data)
    with runtime_errors():
        check_destination(out, overwrite)
    module, meta, spec, reload = load_any(model, weights, trust_checkpoint)
    parity_data_spec = resolve_data_spec(parity_data_spec, meta.preprocess)
    x, y = parity_data(parity_data_spec, meta, seed)
    common = dict(input_shape=meta.input_shape, preprocess=meta.preprocess.to_dict(), labels=list(meta.labels),
                  parity_inputs=x, parity_labels=y, parity_data=f"{parity_data_spec} (test split, seed {seed})",
                  model_info={"name": meta.name, "source": meta.source, "family": meta.family,
                              "reload": reload, "history": meta.history},
                  overwrite=overwrite, tools={"edgevit": __version__})
    return export_model(module, meta, spec, out, runtime, precision, x, common, seed=seed, opset=opset,
                        static_batch=static_batch, graph_form=graph_form, calib_data=calib_data, soc=tuple(soc),
                        parity_images=parity_images, weight_scales=weight_scales, status=status)


@dataclass
class ParityCheck:
    """What `check_parity` measured on this machine, next to what the manifest recorded at export."""
    artifact: str
    precision: str
    data: str
    metrics: dict                      # n, top1_agreement, max_abs, sqnr_db (runtimes.parity.compare)
    thresholds: dict
    failures: list[str]                # broken thresholds: empty when parity holds
    differences: list[str]             # beyond another image subset's spread vs the export-time record
    machine: dict                      # runtimes.machine.describe() here
    recorded_machine: dict | None = None
    top1: dict = field(default_factory=dict)   # runtime / torch top-1 % when the data has the model's labels
    ties_excluded: bool = True                 # agreement judged on decisive images (runtimes.parity.TIE_SIGMAS)

    @property
    def ok(self) -> bool:
        return not self.failures


def check_parity(artifact, data: str = "auto:512", seed: int = 1, model: str | None = None,
                 weights: str | None = None, threads: int = 1) -> ParityCheck:
    """Re-measure `artifact` against its torch model (the one its manifest records, or `model`) on real
    images, with the manifest's thresholds, and compare with the export-time record and machine."""
    import torch

    from edgevit.data import parse_data_spec, resolve_data_spec
    from edgevit.data.preprocess import Preprocess
    from runtimes import machine, parity
    from runtimes.artifact import load_artifact
    from runtimes.runner import open_runner, run_batched
    parse_data_spec(data)
    artifact = getattr(artifact, "root", artifact)   # an Artifact or its directory
    with runtime_errors():
        art = load_artifact(artifact)
    reload = (art.manifest.get("model") or {}).get("reload")
    if model:
        module, meta, _, _ = load_any(model, weights)
    elif reload and reload.get("kind") == "registry":
        module, meta, _, _ = load_any(reload["name"], weights or reload.get("weights"))
    elif reload and reload.get("kind") == "quantized":
        module, meta, _, _ = load_any(reload["path"])
    else:
        raise UsageError(f"{artifact} does not record its torch model; pass --model NAME_OR_QUANTIZED_DIR")
    meta = type(meta)(meta.name, Preprocess.from_dict(art.manifest["preprocess"]), meta.labels, meta.source)
    data = resolve_data_spec(data, meta.preprocess)
    x, y = parity_data(data, meta, seed)
    with torch.no_grad():
        ref = module.eval()(torch.from_numpy(x)).numpy()
    with runtime_errors():
        runner = open_runner(art, threads=threads)
    got = run_batched(runner, x, 1 if isinstance(art.manifest["input"]["shape"][0], int) else 256)
    m = parity.compare(ref, got)
    record = art.manifest["parity"]
    top1 = {} if y is None else {"runtime": float(100 * (got.argmax(-1) == y).mean()),
                                 "torch": float(100 * (ref.argmax(-1) == y).mean())}
    ties = parity.ties_excluded(record.get("precision_class", ""))
    return ParityCheck(str(artifact), art.precision(), f"{data}, seed {seed}", m, record["thresholds"],
                       parity.failures(m, record["thresholds"], ties), parity.differences(m, record.get("metrics")),
                       machine.describe(), record.get("machine"), top1, ties)
