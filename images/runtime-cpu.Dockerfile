# The rlhfjob runtime for CPU nodes: every pod of a job (python -m rlhfjob.worker)
# runs it. torch comes from PyTorch's CPU wheel index (about 200 MB instead of the
# 3 GB CUDA build that PyPI serves); the version is pyproject.toml's pin, which
# tests/unit/test_images.py checks against TORCH_VERSION. Build from the
# repository root:
#   docker build -f images/runtime-cpu.Dockerfile -t ghcr.io/rlhfjob/runtime:0.1.0-cpu .
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.9.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Pods run with a read-only root filesystem: everything that writes goes to /tmp
# (an emptyDir in the pod); /dev/shm is another, memory-backed.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    HF_HOME=/tmp/.cache/huggingface \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    OMP_NUM_THREADS=1

# torch first, from its own index; `pip install .` then finds the pin satisfied.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /opt/rlhfjob
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
RUN pip install --no-cache-dir . \
    && groupadd --gid 1000 rlhfjob \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin rlhfjob
# The examples' entrypoints (spec.entrypoint.file: examples/...) resolve from here.
COPY examples/ examples/

USER 1000:1000

ENTRYPOINT ["python", "-m", "rlhfjob.worker"]
