# sdnet-plugin: every command creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdnet-installed
PIP := $(PY) -m pip install --progress-bar off

.PHONY: install lint test demo mmcv bench clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -q -U pip "setuptools<81" wheel
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) --no-build-isolation basicsr==1.4.2
	$(PIP) -e '.[test,onnx]'
	$(PY) -m sdnet_plugin.ops.fused_cpu
	touch $@

# Style checks in BasicSR's manner (settings in setup.cfg); also run by pre-commit (.pre-commit-config.yaml).
LINT_PATHS := sdnet_plugin tests benchmarks datasets_prep scripts setup.py sdnet_plugin_hook.py

lint: $(STAMP)
	$(PY) -m flake8 $(LINT_PATHS)
	$(PY) -m isort --check-only --diff $(LINT_PATHS)
	$(PY) -m yapf --diff -r $(LINT_PATHS)

test: lint
	$(PY) -m pytest -q tests

# Synthetic data -> LMDB -> train (fine-tunes weights/sdnet_light_camera.pth when present) -> test -> pictures.
demo: $(STAMP)
	$(PY) -m sdnet_plugin.demo

# Optional accelerated DCN backend: mmcv 2.2.0's ops built against this torch (about 13 minutes on 2 cores).
MMCV_VERSION := 2.2.0
mmcv: $(STAMP)
	$(PIP) mmengine==0.10.7 ninja
	rm -rf build/mmcv && mkdir -p build/mmcv
	cd build/mmcv && $(abspath $(PY)) -m pip download --no-deps --no-build-isolation --no-binary :all: mmcv==$(MMCV_VERSION) -d . \
		&& tar xzf mmcv-$(MMCV_VERSION).tar.gz
	# mmcv asks for C++14/17; torch's headers need C++20.
	sed -i 's/c++14/c++20/g; s/c++17/c++20/g' build/mmcv/mmcv-$(MMCV_VERSION)/setup.py
	cd build/mmcv/mmcv-$(MMCV_VERSION) && MMCV_WITH_OPS=1 MAX_JOBS=2 $(abspath $(PY)) -m pip install \
		--no-build-isolation --no-deps .
	$(PY) -c "from sdnet_plugin.ops import available_backends as a; print('DCN backends:', a())"

# Speed tables: presets, the CPU fast path against the float32 path (same run), latency per DCN backend,
# onnxruntime next to PyTorch.
bench: $(STAMP)
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/onnx_speed.py --clock cpu

clean:
	rm -rf $(VENV) build *.egg-info
