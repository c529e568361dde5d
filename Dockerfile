# pdserve images. Two targets:
#   docker build -t pdserve:cpu .                    # default (the last stage): Paddle CPU wheel
#   docker build --target gpu -t pdserve:gpu .       # Paddle GPU base image with CUDA, cuDNN, TensorRT
# The install step is the Makefile's, the one `make serve` runs, so image and laptop install alike.
# No Docker engine or registry where pdserve is developed: the CPU image is built there with buildah
# on a base made from Debian's packages (make base-image; make image BASE=localhost/pdserve-base:bookworm)
# and run by make image-test; the GPU image was never built. See README, "Deploy with Docker".

# The official image, or any Debian 12 with python3 3.11 and venv (make base-image): the build calls
# python3, and the final stage finds python in /opt/venv/bin, wherever the base keeps its own.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Paddle's own GPU image for Paddle 3.3 and CUDA 12.6, as Paddle's docs name it (README, GPU: the
# sources); Docker Hub mirrors it as paddlepaddle/paddle:<same tag>. CUDA 12.6 needs driver >= 550.
ARG GPU_BASE=ccr-2vdh3abv-pub.cnc.bj.baidubce.com/paddlepaddle/paddle:3.3.0-gpu-cuda12.6-cudnn9.5

# ---- GPU -----------------------------------------------------------------------------------------
FROM ${GPU_BASE} AS gpu
# tini: PID 1 that forwards SIGTERM (the drain) and reaps the worker processes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home pdserve
WORKDIR /srv/pdserve
# Dependencies first (from the lock), so a code change does not download them again.
COPY pyproject.toml Makefile ./
COPY requirements ./requirements
COPY scripts/lock_without.py ./scripts/
# Paddle (paddlepaddle-gpu) comes with the base image: PADDLE= installs no Paddle wheel over it. The
# build fails on a base without CUDA Paddle and prints the TensorRT version Paddle was built against
# (pdserve refuses TensorRT models with a clear reason when no TensorRT runtime loads).
RUN make VENV=/opt/venv VENV_FLAGS=--system-site-packages PADDLE= PYTHON=python3 /opt/venv/.deps \
 && /opt/venv/bin/python -c "import paddle, paddle.inference as i; assert paddle.device.is_compiled_with_cuda(), 'no CUDA Paddle'; print('TensorRT compiled', i.get_trt_compile_version())"
COPY README.md ./
COPY pdserve ./pdserve
RUN make VENV=/opt/venv VENV_FLAGS=--system-site-packages PADDLE= PYTHON=python3 EDITABLE= /opt/venv/.serve
COPY model_repo /models
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PDSERVE_MODEL_REPO=/models \
    PDSERVE_HOST=0.0.0.0 \
    PDSERVE_PORT=8000 \
    PDSERVE_DEVICE=gpu:0 \
    PDSERVE_TRT_CACHE_DIR=/var/cache/pdserve/trt
RUN mkdir -p /var/cache/pdserve/trt && chown 10001 /var/cache/pdserve/trt
# TensorRT engines take minutes to build; keep them across restarts.
VOLUME ["/var/cache/pdserve/trt"]
USER 10001
EXPOSE 8000
# /readyz, not /healthz: a container whose models all failed to load is not healthy.
HEALTHCHECK --interval=15s --timeout=3s --start-period=900s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
ENTRYPOINT ["tini", "--", "pdserve", "serve"]

# ---- CPU -----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/pdserve
# Dependencies first (from the lock, hash-checked), so a code change does not download Paddle again.
COPY pyproject.toml Makefile ./
COPY requirements ./requirements
COPY scripts/lock_without.py ./scripts/
# Where the build's way to PyPI goes through a TLS-inspecting proxy, pip needs that proxy's CA:
# `make image` passes the host's PIP_CERT as the build secret pip_cert, mounted for these two steps
# only, never stored in a layer. Without the secret, pip uses the base image's CA certificates.
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && make VENV=/opt/venv /opt/venv/.deps
# Then the package itself, installed (not editable): the final image needs only /opt/venv. (pip
# fetches the build backend, setuptools, for this step: the secret again.)
COPY README.md ./
COPY pdserve ./pdserve
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && make VENV=/opt/venv EDITABLE= /opt/venv/.serve

FROM ${PYTHON_IMAGE} AS cpu
# libgomp: OpenMP runtime used by Paddle's CPU kernels. tini: PID 1 that forwards SIGTERM (the
# drain) and reaps the worker processes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home pdserve
COPY --from=cpu-build /opt/venv /opt/venv
# The default model repository is baked in; mount another over /models to replace it.
COPY model_repo /models
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PDSERVE_MODEL_REPO=/models \
    PDSERVE_HOST=0.0.0.0 \
    PDSERVE_PORT=8000
USER 10001
EXPOSE 8000
# /readyz, not /healthz: a container whose models all failed to load is not healthy.
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
# SIGTERM: /readyz 503 at once, requests still taken for PDSERVE_DRAIN_DELAY_S, accepted ones answered
# (PDSERVE_GRACEFUL_SHUTDOWN_S), workers stopped; exit 0. Allow docker stop -t 40 or more.
ENTRYPOINT ["tini", "--", "pdserve", "serve"]
