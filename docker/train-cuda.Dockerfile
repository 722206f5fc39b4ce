# syntax=docker/dockerfile:1
# ldct-train + ldct-export built with Candle's CUDA backend (trainer feature
# `cuda`): nvcc from the CUDA devel image in the builder, the runtime image has
# only the CUDA/cuDNN runtime libraries.
#   docker build -f docker/train-cuda.Dockerfile -t ldct-train:cuda .

FROM nvidia/cuda:12.6.3-cudnn-devel-ubuntu24.04 AS build
ARG RUST_VERSION=1.95.0
# Compute capabilities to build the Candle kernels for (e.g. 80 A100, 90 H100).
ARG CUDA_COMPUTE_CAP=80
ENV RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo PATH=/opt/cargo/bin:/usr/local/cuda/bin:$PATH \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
       | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ldct-train -p ldct-export --features ldct-train/cuda \
    && install -m 0755 target/release/ldct-train target/release/ldct-export /usr/local/bin/

FROM python:3.11.11-slim-bookworm AS ort
ARG ORT_VERSION=1.32.0
WORKDIR /ort
RUN python -m pip download --no-cache-dir --no-deps --only-binary=:all: \
        "onnxruntime==${ORT_VERSION}" -d /wheels \
    && python -m zipfile -e /wheels/onnxruntime-*.whl /ort/wheel \
    && mkdir -p /ort/lib \
    && cp /ort/wheel/onnxruntime/capi/libonnxruntime.so.1.* /ort/lib/

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG ORT_VERSION=1.32.0
LABEL org.opencontainers.image.title="ldct-train (CUDA)" \
      org.opencontainers.image.description="Low-dose CT denoising trainer and exporter, Candle CUDA"
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 ldct \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ldct
COPY --from=build /usr/local/bin/ldct-train /usr/local/bin/ldct-export /usr/local/bin/
COPY --from=ort /ort/lib/ /opt/onnxruntime/lib/
# The exporter's parity check runs ONNX Runtime on the CPU.
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /work
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/ldct-train"]
