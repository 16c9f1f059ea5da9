#!/usr/bin/env bash
# Build, once, an emulated arm64 edge device: a Debian bookworm minbase root file system made by
# `debootstrap --arch arm64` under qemu-user-static, with python3 (3.11) and PyPI's aarch64 wheels of
# onnxruntime, ai-edge-litert, numpy and Pillow installed offline. Run it as root on a Debian/Ubuntu host
# with debootstrap, qemu-user-static and binfmt-support installed.
#
#   examples/device_demo/arm64/build_rootfs.sh            # builds into $EDGEVIT_ARM64_ROOT (see below)
#   chroot "$ROOT" python3 /demo/classify.py ...           # then run the torch-free demo "on the device"
#
# The root is built in a temporary directory beside the target and renamed into place only when it is
# complete (marker file .edgevit-arm64-ready), so a half-built root is never taken as ready. A second run
# with the marker present does nothing. Set EDGEVIT_ARM64_REBUILD=1 to rebuild.
#
# Do not bind /proc or /sys into the chroot: onnxruntime's CPU detection (cpuinfo) crashed with them under
# qemu-user; without them it prints a warning and runs.
set -euo pipefail

ROOT="${EDGEVIT_ARM64_ROOT:-$HOME/.cache/edgevit/arm64-rootfs}"
MARKER=".edgevit-arm64-ready"
SUITE="${EDGEVIT_ARM64_SUITE:-bookworm}"
# The Debian mirror this machine's apt already uses (its first enabled `deb` source), unless given.
# (Either file set may be absent: no grep failure may end the script under `set -e -o pipefail`.)
host_mirror() {
    { grep -shE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' || true
      grep -shE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' || true; } \
        | { grep -v security || true; } | head -1
}
MIRROR="${EDGEVIT_ARM64_MIRROR:-$(host_mirror)}"
ORT_VERSION="${EDGEVIT_ARM64_ORT:-1.32.0}"
LITERT_VERSION="${EDGEVIT_ARM64_LITERT:-2.3.0}"
HOST_PIP="${HOST_PIP:-}"

log() { printf '[arm64-rootfs] %s\n' "$*" >&2; }

if [[ -f "$ROOT/$MARKER" && "${EDGEVIT_ARM64_REBUILD:-0}" != "1" ]]; then
    log "ready: $ROOT ($(cat "$ROOT/$MARKER" | head -1))"
    exit 0
fi

[[ $EUID -eq 0 ]] || { log "must run as root (debootstrap and chroot)"; exit 1; }
have_tools() {
    command -v debootstrap >/dev/null && command -v update-binfmts >/dev/null \
        && [[ -x /usr/bin/qemu-aarch64-static || "$(uname -m)" == "aarch64" ]]
}
if ! have_tools && command -v apt-get >/dev/null; then
    log "installing debootstrap qemu-user-static binfmt-support"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static binfmt-support
fi
have_tools || { log "missing tools: apt-get install debootstrap qemu-user-static binfmt-support"; exit 1; }

# --- arm64 binaries must run transparently: binfmt_misc mounted and the qemu-aarch64 handler enabled.
if [[ "$(uname -m)" != "aarch64" ]]; then
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        log "mounting binfmt_misc"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || ! grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
        log "enabling the qemu-aarch64 binfmt handler"
        update-binfmts --enable qemu-aarch64
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || { log "qemu-aarch64 binfmt handler is not enabled"; exit 1; }
fi

# --- a pip on the host to fetch the aarch64 wheels (the project's venv if there is one).
if [[ -z "$HOST_PIP" ]]; then
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    repo="$(cd "$here/../../.." && pwd)"
    if [[ -x "$repo/.venv/bin/python" ]]; then HOST_PIP="$repo/.venv/bin/python -m pip"
    else HOST_PIP="python3 -m pip"; fi
fi

parent="$(dirname "$ROOT")"
mkdir -p "$parent"
WORK="$(mktemp -d "$parent/.$(basename "$ROOT").partial.XXXXXX")"
cleanup() { rm -rf --one-file-system "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
start=$(date +%s)

# --- 1. the wheels, fetched on the host for linux/aarch64 + CPython 3.11 (bookworm's python3).
WHEELS="$WORK/wheels"
mkdir -p "$WHEELS"
log "fetching aarch64 wheels (onnxruntime==$ORT_VERSION ai-edge-litert==$LITERT_VERSION numpy Pillow)"
$HOST_PIP download -q --disable-pip-version-check -d "$WHEELS" \
    --platform manylinux2014_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 \
    --only-binary=:all: --python-version 3.11 --implementation cp \
    "onnxruntime==$ORT_VERSION" "ai-edge-litert==$LITERT_VERSION" numpy Pillow

# --- 2. the root file system (first stage on the host, second stage under qemu).
RFS="$WORK/rootfs"
[[ -n "$MIRROR" ]] || { log "no Debian mirror found in /etc/apt; set EDGEVIT_ARM64_MIRROR"; exit 2; }
log "debootstrap --arch arm64 --variant=minbase $SUITE (a few minutes; the second stage runs under emulation)"
debootstrap --arch arm64 --variant=minbase --include=python3,python3-pip,ca-certificates \
    "$SUITE" "$RFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -30 "$WORK/debootstrap.log" >&2; [[ -f "$RFS/debootstrap/debootstrap.log" ]] && tail -30 "$RFS/debootstrap/debootstrap.log" >&2; exit 1; }

# --- 3. the wheels, installed offline by the device's own pip.
mkdir -p "$RFS/tmp/wheels"
cp "$WHEELS"/*.whl "$RFS/tmp/wheels/"
log "installing the wheels inside the chroot (offline)"
chroot "$RFS" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root \
    python3 -m pip install -q --no-index --find-links /tmp/wheels --break-system-packages \
    --disable-pip-version-check --no-cache-dir \
    "onnxruntime==$ORT_VERSION" "ai-edge-litert==$LITERT_VERSION" numpy Pillow
rm -rf "$RFS/tmp/wheels"
apt_cache="$RFS/var/cache/apt/archives"
find "$apt_cache" -maxdepth 1 -name '*.deb' -delete 2>/dev/null || true

# --- 4. a smoke test on the device: each runtime imports and runs a one-op model.
log "smoke test under emulation"
versions="$(chroot "$RFS" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root python3 - <<'EOF'
import platform, sys
import numpy as np
import onnxruntime as ort
import PIL
from ai_edge_litert.interpreter import Interpreter  # noqa: F401  (import is the check)
import importlib.metadata as md
assert platform.machine() == "aarch64", platform.machine()
print(f"machine={platform.machine()} python={sys.version.split()[0]} onnxruntime={ort.__version__} "
      f"ai-edge-litert={md.version('ai-edge-litert')} numpy={np.__version__} Pillow={PIL.__version__}")
EOF
)" || { log "smoke test failed"; exit 1; }
log "$versions"

# --- 5. marker, then the atomic rename into place.
end=$(date +%s)
printf '%s\nbuilt=%s seconds=%s suite=%s\n' "$versions" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((end - start))" "$SUITE" \
    >"$RFS/$MARKER"
if [[ -e "$ROOT" ]]; then
    old="$WORK/old"
    mv "$ROOT" "$old"
fi
mv "$RFS" "$ROOT"
log "ready: $ROOT in $((end - start)) s"
