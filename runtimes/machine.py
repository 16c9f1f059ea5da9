"""Which machine a number was measured on: CPU model, architecture and the int8 features kernels dispatch on.

onnxruntime and LiteRT pick their integer kernels by CPU feature (x86: AVX2, AVX-512 VNNI, AVX-VNNI, AMX;
ARM: the dot-product and i8mm extensions), so a parity or speed number holds for that class of CPU.
Manifests record `describe()` next to export-time parity; `edgevit check-parity` compares it with the
machine it runs on. Reads /proc/cpuinfo (Linux); elsewhere only `platform` is known.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

# Feature flags (as /proc/cpuinfo spells them) that change integer-kernel arithmetic or speed.
INT8_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
                 "asimd", "asimddp", "i8mm", "sve", "sve2")
# The features that decide whether x86 u8×s8 kernels accumulate exactly without session.x64quantprecision.
_VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")


def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


@lru_cache(maxsize=1)
def describe() -> dict:
    """{'arch', 'cpu', 'int8_features', 'int8_class', 'onnxruntime'} of this machine (cached per process)."""
    model, flags = _cpuinfo()
    arch = platform.machine().lower()
    features = [f for f in INT8_FEATURES if f in flags]
    out = {"arch": arch, "cpu": model or platform.processor() or "unknown",
           "int8_features": features, "int8_class": int8_class(arch, features)}
    try:
        import onnxruntime
        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def u8s8_exact() -> bool:
    """Whether onnxruntime's default x86 u8×s8 kernels accumulate exactly on this CPU: true on ARM and on x86
    with AVX-512 VNNI (int32 dot products), false on AVX2/AVX-512F without it (int16 pair sums saturate).

    Read from CPUID (numpy's dispatch table), not /proc/cpuinfo: that is what onnxruntime dispatches on, and
    it stays right under emulation (qemu-user shows the host's /proc/cpuinfo). When x86 features cannot be
    read, or the CPU has only AVX-VNNI (not in numpy's table), the answer is False: the exact path is the
    safe one. runtimes.onnx.session applies session.x64quantprecision exactly when this is False."""
    arch = platform.machine().lower()
    if arch not in ("x86_64", "amd64", "i686", "x86"):
        return True
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpu
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as cpu
        except ImportError:
            return False
    return bool(cpu.get("AVX512VNNI"))


def int8_class(arch: str, features: list[str]) -> str:
    """A short name for the integer-kernel family: 'x86-vnni', 'x86-avx2', 'arm-dotprod', 'arm', or arch."""
    if arch in ("x86_64", "amd64", "i686", "x86"):
        if any(f in features for f in _VNNI):
            return "x86-vnni"
        return "x86-avx2" if "avx2" in features else "x86"
    if arch in ("aarch64", "arm64"):
        return "arm-dotprod" if "asimddp" in features else "arm"
    return arch or "unknown"


def summary(machine: dict | None = None) -> str:
    """One line for tables and messages: 'AMD EPYC (x86_64; avx2 avx512_vnni; onnxruntime 1.22.0)'."""
    m = machine or describe()
    feats = " ".join(m.get("int8_features") or []) or "no int8 extensions"
    ort = f"; onnxruntime {m['onnxruntime']}" if m.get("onnxruntime") else ""
    return f"{m.get('cpu', 'unknown')} ({m.get('arch', '?')}; {feats}{ort})"
