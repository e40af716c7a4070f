# syntax=docker/dockerfile:1
# millibatch images. Targets:
#   cpu  Debian slim + ONNX Runtime CPU, serving all-MiniLM-L6-v2 converted at build time (no torch).
#   gpu  NVIDIA CUDA runtime + onnxruntime-gpu + TensorRT.
# Build from the repository root:  docker build --target cpu .
# Without a registry (CI): deploy/container/build-and-test.sh makes BASE from debootstrap.
ARG BASE=debian:bookworm-slim
ARG CUDA_BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---- python: interpreter and venv tooling on the Debian base -------------------------------------
FROM ${BASE} AS python
# Distribution packages follow the base image's release; pinning them would break on every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# Extra CA certificates (*.crt) for a TLS-inspecting proxy in front of PyPI; usually none.
COPY deploy/container/ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt

# ---- builder: the package wheel and the converted model (torch lives only here) ----------------
FROM python AS builder
# CPU-only torch: from deploy/container/wheels/ if the build script put it there, else this index.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG MODEL=all-MiniLM-L6-v2
WORKDIR /src
COPY deploy/container/wheels/ /wheels/
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --find-links /wheels --extra-index-url "${TORCH_INDEX_URL}" "torch==2.13.0"
# README.md is the package long description; the wildcard keeps the build going where it is absent.
COPY pyproject.toml README.md* ./
COPY millibatch/ millibatch/
COPY service/ service/
COPY batching/ batching/
COPY engines/ engines/
RUN /opt/build/bin/pip install --find-links /wheels ".[server,convert]" \
    && /opt/build/bin/pip wheel --wheel-dir /dist ".[server]" \
    && /opt/build/bin/millibatch convert "${MODEL}" -o "/models/${MODEL}" \
    && chmod -R a+rX /models  # convert's staging dir is private (mkdtemp 0700); the server runs as uid 10001

# ---- cpu: runtime without torch ------------------------------------------------------------------
FROM python AS cpu
ARG MODEL=all-MiniLM-L6-v2
COPY --from=builder /dist/ /dist/
RUN python3 -m venv /opt/millibatch \
    && /opt/millibatch/bin/pip install --no-index --find-links /dist "millibatch[server]" \
    && rm -rf /dist \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent millibatch
COPY --from=builder --chown=root:root /models/ /models/
ENV PATH=/opt/millibatch/bin:$PATH \
    MILLIBATCH_MODELS=/models/${MODEL} \
    MILLIBATCH_PORT=50051 \
    MILLIBATCH_HTTP_PORT=8080 \
    MILLIBATCH_METRICS_PORT=9095 \
    MILLIBATCH_CACHE_DIR=/tmp/millibatch
USER 10001:10001
EXPOSE 50051 8080 9095
ENTRYPOINT ["millibatch"]
CMD ["serve"]

# ---- gpu: CUDA runtime, onnxruntime-gpu and TensorRT ---------------------------------------------
FROM ${CUDA_BASE} AS gpu
ARG MODEL=all-MiniLM-L6-v2
ARG ORT_GPU_VERSION=1.23.2
ARG TENSORRT_VERSION=10.13.3.9
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/container/ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY --from=builder /dist/ /dist/
# onnxruntime (CPU) and onnxruntime-gpu share one import name: remove the CPU build before adding the GPU one.
RUN python3 -m venv /opt/millibatch \
    && /opt/millibatch/bin/pip install --no-index --find-links /dist "millibatch[server]" \
    && /opt/millibatch/bin/pip uninstall -y onnxruntime \
    && /opt/millibatch/bin/pip install "onnxruntime-gpu==${ORT_GPU_VERSION}" "cuda-python>=12.3" \
        "tensorrt-cu12==${TENSORRT_VERSION}" \
    && rm -rf /dist \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent millibatch
COPY --from=builder --chown=root:root /models/ /models/
ENV PATH=/opt/millibatch/bin:$PATH \
    MILLIBATCH_MODELS=/models/${MODEL} \
    MILLIBATCH_DEVICE=cuda \
    MILLIBATCH_PORT=50051 \
    MILLIBATCH_HTTP_PORT=8080 \
    MILLIBATCH_METRICS_PORT=9095 \
    MILLIBATCH_CACHE_DIR=/tmp/millibatch \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 50051 8080 9095
ENTRYPOINT ["millibatch"]
CMD ["serve"]
