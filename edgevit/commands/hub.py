"""`edgevit hub compile|profile|infer`: Qualcomm AI Hub jobs for an exported artifact on a real phone."""
from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import click

from edgevit.commands.common import console, print_table
from edgevit.errors import StageError, UsageError


def _hub_call(fn, *args, **kwargs):
    """Run a runtimes.hub step, mapping its errors to the CLI's exit codes (2 config/input, 1 job)."""
    from runtimes.errors import ParityError, RuntimeArtifactError
    from runtimes.hub import HubJobError, scrub
    try:
        return fn(*args, **kwargs)
    except RuntimeArtifactError as e:
        raise UsageError(scrub(str(e))) from None
    except (HubJobError, ParityError) as e:
        raise StageError(scrub(str(e))) from None


def hub_options(f):
    @click.argument("artifact", type=click.Path(exists=True, file_okay=False))
    @click.option("--device", default="Samsung Galaxy S24", show_default=True,
                  help="Hub device name, exactly as `qai-hub list-devices` spells it.")
    @click.option("--target", type=click.Choice(["tflite", "onnx", "qnn_context_binary", "qnn_dlc",
                                                 "precompiled_qnn_onnx"]), default=None,
                  help="Compile target (default: tflite for .tflite, onnx for ONNX, "
                       "qnn_context_binary for QNN bundles).")
    @click.option("--options", "hub_opts", default="", help="Extra qai-hub compile options, e.g. '--quantize_io'.")
    @click.option("--timeout", type=click.IntRange(1), default=None, help="Seconds to wait for each job.")
    @click.option("--report", type=click.Path(dir_okay=False), default=None,
                  help="Write the job ids, links and results as JSON here (never the token).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)
    return wrapper


def _jobs(artifact, device, target, hub_opts, timeout):
    """Verify the artifact, then the token: both fail with exit 2 before anything is uploaded."""
    from runtimes.artifact import load_artifact
    from runtimes.hub import HubJobs, make_client
    art = _hub_call(load_artifact, artifact)
    client = _hub_call(make_client)
    return art, _hub_call(HubJobs, client, art, device, target, hub_opts, timeout)


def _finish(jobs, rows: list[dict], report: str | None, title: str) -> None:
    from runtimes.hub import scrub
    flat = [[r["job"], r.get("id"), r.get("status"), r.get("url")] for r in jobs.log]
    print_table(title, ["job", "id", "status", "link"], flat)
    if report:
        text = scrub(json.dumps({"artifact": str(jobs.artifact.root), "device": jobs.device_name,
                                 "target": jobs.target, "jobs": jobs.log, "results": rows}, indent=2,
                                default=str) + "\n")
        path = Path(report)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        console.print(f"wrote {report}")


@click.group("hub")
def hub_group():
    """Compile, profile and run an artifact on a real phone through Qualcomm AI Hub (needs a token).

    Configure the token once with `qai-hub configure --api_token YOUR_TOKEN` or set QAI_HUB_API_TOKEN.

    \b
    Examples:
      edgevit hub compile out/vit-small-qnn --device "Samsung Galaxy S24"
      edgevit hub profile out/vit-small-tflite --device "Samsung Galaxy S24" --report s24.json
      edgevit hub infer out/vit-small-onnx --device "Samsung Galaxy S24" --data fashion-mnist:16
    """


@hub_group.command("compile")
@hub_options
def compile_cmd(artifact, device, target, hub_opts, timeout, report):
    """Upload ARTIFACT's model and compile it for the device.

    \b
    Example:
      edgevit hub compile out/vit-small-qnn --device "Samsung Galaxy S24"
    """
    _, jobs = _jobs(artifact, device, target, hub_opts, timeout)
    with console.status(f"compiling {artifact} for {device} on Qualcomm AI Hub"):
        _, row = _hub_call(jobs.compile)
    _finish(jobs, [row], report, f"compiled {artifact} for {device} ({jobs.target})")


@hub_group.command("profile")
@hub_options
def profile_cmd(artifact, device, target, hub_opts, timeout, report):
    """Compile ARTIFACT, then measure latency, peak memory and compute-unit placement on the phone.

    \b
    Example:
      edgevit hub profile out/vit-small-tflite --device "Samsung Galaxy S24" --report s24.json
    """
    _, jobs = _jobs(artifact, device, target, hub_opts, timeout)
    with console.status(f"profiling {artifact} on {device}"):
        row = _hub_call(jobs.profile)
    _finish(jobs, [row], report, f"profile of {artifact} on {device}")
    units = ", ".join(f"{k} {v}" for k, v in sorted(row["ops_per_compute_unit"].items())) or "-"
    console.print(f"inference {row['inference_ms']} ms, peak memory {row['peak_memory_bytes']} B, "
                  f"layers per unit: {units}")


@hub_group.command("infer")
@hub_options
@click.option("--data", default="auto:16", show_default=True,
              help="Real images to send (auto[:N] = the model's own data, fashion-mnist:N or folder:PATH[:N]); keep N small.")
@click.option("--seed", default=0, show_default=True, help="Seed for the image subset.")
def infer_cmd(artifact, device, target, hub_opts, timeout, report, data, seed):
    """Run images on the phone and compare its outputs with ARTIFACT run here (exit 1 if they disagree).

    \b
    Example:
      edgevit hub infer out/vit-small-onnx --device "Samsung Galaxy S24" --data fashion-mnist:16
    """
    from edgevit.data import load_data, parse_data_spec
    from edgevit.data.preprocess import Preprocess
    from runtimes import parity
    from runtimes.runner import open_runner, run_batched
    spec = parse_data_spec(data)
    art, jobs = _jobs(artifact, device, target, hub_opts, timeout)
    x, _ = load_data(spec, Preprocess.from_dict(art.manifest["preprocess"]), split="test", seed=seed)
    x = x.numpy()
    runner = _hub_call(open_runner, art)
    local = run_batched(runner, x, 1 if isinstance(art.manifest["input"]["shape"][0], int) else len(x))
    # an fp32 artifact may run in fp16 on the phone's NPU/GPU: hold it to the fp16 bar, not bit-equality
    thresholds = (parity.THRESHOLDS["fp16"] if art.precision() == "fp32"
                  else art.manifest.get("parity", {}).get("thresholds", {}))
    with console.status(f"running {len(x)} images on {device}"):
        row = _hub_call(jobs.infer, x, local, thresholds)
    _finish(jobs, [row], report, f"{artifact} on {device} vs the local run")
    m = row["parity_vs_local"]
    console.print(f"phone vs local on {m['n']} images: top-1 agreement {100 * m['top1_agreement']:.2f}%, "
                  f"max abs {m['max_abs']:.3g}, SQNR {m['sqnr_db']} dB")
    if row.get("parity_failures"):
        raise StageError(f"phone outputs disagree with the local run: {'; '.join(row['parity_failures'])}")


COMMANDS = [hub_group]
