# syntax=docker/dockerfile:1
# ldct-train + ldct-export (CPU) for the retraining Job; curl calls the server's
# reload endpoint; ONNX Runtime (CPU) for the exporter's parity check.
#   docker build -f docker/train-cpu.Dockerfile -t ldct-train:cpu .

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ldct-train -p ldct-export \
    && install -m 0755 target/release/ldct-train target/release/ldct-export /usr/local/bin/

FROM python:3.11.11-slim-bookworm AS ort
ARG ORT_VERSION=1.32.0
WORKDIR /ort
RUN python -m pip download --no-cache-dir --no-deps --only-binary=:all: \
        "onnxruntime==${ORT_VERSION}" -d /wheels \
    && python -m zipfile -e /wheels/onnxruntime-*.whl /ort/wheel \
    && mkdir -p /ort/lib \
    && cp /ort/wheel/onnxruntime/capi/libonnxruntime.so.1.* /ort/lib/

FROM debian:bookworm-20250113-slim
ARG ORT_VERSION=1.32.0
LABEL org.opencontainers.image.title="ldct-train (CPU)" \
      org.opencontainers.image.description="Low-dose CT denoising trainer and exporter"
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 ldct \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ldct
COPY --from=build /usr/local/bin/ldct-train /usr/local/bin/ldct-export /usr/local/bin/
COPY --from=ort /ort/lib/ /opt/onnxruntime/lib/
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}
USER 10001:10001
WORKDIR /work
# A batch tool, not a service: nothing to probe.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/ldct-train"]
