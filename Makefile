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
SPEC := .$(if $(PADDLE),[$(PADDLE)])
# Paddle 3.x GPU wheels are on Paddle's own index, one channel per CUDA version (cu118, cu126, cu129,
# cu130); PyPI's paddlepaddle-gpu stops at 2.6.2. The gpu extra asks for >=3.3, which only this index has.
CUDA ?= cu126
PADDLE_GPU_INDEX ?= https://www.paddlepaddle.org.cn/packages/stable/$(CUDA)/
PIP_EXTRA := $(if $(filter gpu,$(PADDLE)),--extra-index-url $(PADDLE_GPU_INDEX))

.PHONY: serve test lint typecheck unit model int8-model int8-search bench clean k8s-validate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

# One stamp per set of extras; a changed pyproject.toml reinstalls.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_EXTRA) -e '$(SPEC)'
	touch $@

# PaddleSlim's pins replace opencv-python-headless with opencv-python 4.6 and break `import cv2`
# under numpy 2, so it goes into a folder of its own, without its dependencies, for the one test
# that checks a PaddleSlim-quantized model serves like ours (tests/e2e/test_paddleslim_compat.py).
SLIM_SIDE := $(VENV)/paddleslim-side
SLIM_PACKAGES := paddleslim==2.6.0 pyzmq tqdm six matplotlib pyparsing cycler python-dateutil kiwisolver \
	fonttools requests urllib3 decorator "setuptools<81"

$(VENV)/.dev: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[cpu,dev,plots,convert]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --target $(SLIM_SIDE) \
		--upgrade $(SLIM_PACKAGES)
	touch $@ $(VENV)/.serve

serve: $(VENV)/.serve
	$(BIN)/pdserve serve --host $(HOST) --port $(PORT) --model-repo $(MODEL_REPO)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	$(MAKE) --no-print-directory k8s-validate

# Render both kustomize overlays (kubectl's built-in kustomize) and validate them offline.
k8s-validate: $(VENV)/.dev
	@command -v kubectl >/dev/null || { echo "kubectl is needed to render deploy/k8s (apt-get install kubectl)"; exit 1; }
	@mkdir -p build
	@for overlay in cpu gpu; do \
		kubectl kustomize deploy/k8s/overlays/$$overlay > build/k8s-$$overlay.yaml || exit 1; \
		$(BIN)/kubernetes-validate --strict --quiet build/k8s-$$overlay.yaml || exit 1; \
		echo "deploy/k8s/overlays/$$overlay: valid (kubernetes-validate --strict)"; \
	done

typecheck: $(VENV)/.dev
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

unit: $(VENV)/.dev
	$(BIN)/python -m pytest tests/unit

# Re-create model_repo/efficientnet_lite0/1 from the pretrained PyTorch weights.
# FLAGS_enable_pir_api=0 must be set before Python starts, so paddle.jit.save writes model.pdmodel.
model: $(VENV)/.dev
	FLAGS_enable_pir_api=0 $(BIN)/python -m app.pipeline.efficientnet_lite --output model_repo/efficientnet_lite0

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
int8-search: $(VENV)/.dev
	rm -rf $(INT8)/1
	$(BIN)/pdserve quantize $(INT8_CALIBRATION) --target-drop 0.5 \
		--eval-list data/imagenet-sample-selection.txt --strict --sensitivity \
		--cache-dir $(HOME)/.cache/pdserve/calibration

# make bench: pdserve against Triton (nvidia-pytriton), LitServe, plain FastAPI and the in-process
# pipeline. The peers live in their own environment, never in pdserve's: pytriton 0.7.0 needs numpy < 2.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.stamp: pyproject.toml Makefile
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		"numpy<2" "nvidia-pytriton==0.7.0" "litserve==0.2.19" "py-spy==0.4.3" -e '.[cpu]'
	touch $@

bench: $(VENV)/.dev $(BENCH_VENV)/.stamp
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) bench-results .pytest_cache .mypy_cache .ruff_cache *.egg-info
