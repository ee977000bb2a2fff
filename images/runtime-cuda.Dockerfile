# The rlhfjob runtime for NVIDIA GPU nodes. PyPI's torch wheel for Linux carries
# its CUDA libraries (nvidia-* wheels), so the base needs no CUDA toolkit: the
# NVIDIA container toolkit mounts the driver. The version is pyproject.toml's pin,
# which tests/unit/test_images.py checks against TORCH_VERSION. Build from the
# repository root:
#   docker build -f images/runtime-cuda.Dockerfile -t ghcr.io/rlhfjob/runtime:0.1.0 .
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.9.1

# Pods run with a read-only root filesystem: everything that writes goes to /tmp
# (an emptyDir in the pod); /dev/shm is another, memory-backed (NCCL and torch's
# shared-memory tensors).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    HF_HOME=/tmp/.cache/huggingface \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN pip install --no-cache-dir "torch==${TORCH_VERSION}"

WORKDIR /opt/rlhfjob
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
# With the Hugging Face adapter (rlhfjob.models.hf): GPU jobs are where real models
# run. DL3013 reads `.[hf]` as an unpinned package; it is this repository.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[hf]" \
    && groupadd --gid 1000 rlhfjob \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin rlhfjob
# The examples' entrypoints (spec.entrypoint.file: examples/...) resolve from here.
COPY examples/ examples/

USER 1000:1000

ENTRYPOINT ["python", "-m", "rlhfjob.worker"]
