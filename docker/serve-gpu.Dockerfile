# syntax=docker/dockerfile:1
# ldct-serve, GPU: NVIDIA CUDA 12 + cuDNN 9 runtime base and the onnxruntime-gpu
# wheel's libraries (core + CUDA execution provider). Build from the repository root:
#   docker build -f docker/serve-gpu.Dockerfile -t ldct-serve:gpu .
# Ubuntu 24.04 (glibc 2.39) runs the binary built on Debian bookworm (glibc 2.36).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ldct-serve \
    && install -m 0755 target/release/ldct-serve /usr/local/bin/ldct-serve

FROM python:3.11.11-slim-bookworm AS ort
ARG ORT_VERSION=1.31.1
WORKDIR /ort
RUN python -m pip download --no-cache-dir --no-deps --only-binary=:all: \
        "onnxruntime-gpu==${ORT_VERSION}" -d /wheels \
    && python -m zipfile -e /wheels/onnxruntime_gpu-*.whl /ort/wheel \
    && mkdir -p /ort/lib \
    && cp /ort/wheel/onnxruntime/capi/libonnxruntime.so.1.* \
          /ort/wheel/onnxruntime/capi/libonnxruntime_providers_shared.so \
          /ort/wheel/onnxruntime/capi/libonnxruntime_providers_cuda.so /ort/lib/ \
    && ln -s "$(basename /ort/lib/libonnxruntime.so.1.*)" /ort/lib/libonnxruntime.so

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG ORT_VERSION=1.31.1
LABEL org.opencontainers.image.title="ldct-serve (GPU)" \
      org.opencontainers.image.description="Low-dose CT denoising server (ONNX Runtime CUDA)"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /usr/local/bin/ldct-serve /usr/local/bin/ldct-serve
COPY --from=ort /ort/lib/ /opt/onnxruntime/lib/
RUN groupadd --gid 10001 ldct \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ldct \
    && mkdir -p /models \
    && chown 10001:10001 /models
# The CUDA provider library is found next to libonnxruntime.
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    LD_LIBRARY_PATH=/opt/onnxruntime/lib:/usr/local/cuda/lib64 \
    LDCT_MODELS=/models \
    LDCT_BIND=0.0.0.0:8080 \
    LDCT_DEVICE=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /v2/health/live HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/ldct-serve"]
