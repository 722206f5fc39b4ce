# syntax=docker/dockerfile:1
# ldct-serve, CPU: ONNX Runtime from the PyPI onnxruntime wheel (only its shared
# library is kept). Build from the repository root:
#   docker build -f docker/serve-cpu.Dockerfile -t ldct-serve:cpu .

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ldct-serve \
    && install -m 0755 target/release/ldct-serve /usr/local/bin/ldct-serve

FROM python:3.11.11-slim-bookworm AS ort
ARG ORT_VERSION=1.32.0
WORKDIR /ort
RUN python -m pip download --no-cache-dir --no-deps --only-binary=:all: \
        "onnxruntime==${ORT_VERSION}" -d /wheels \
    && python -m zipfile -e /wheels/onnxruntime-*.whl /ort/wheel \
    && mkdir -p /ort/lib \
    && cp /ort/wheel/onnxruntime/capi/libonnxruntime.so.1.* /ort/lib/ \
    && ln -s "$(basename /ort/lib/libonnxruntime.so.1.*)" /ort/lib/libonnxruntime.so

FROM debian:bookworm-20250113-slim
ARG ORT_VERSION=1.32.0
LABEL org.opencontainers.image.title="ldct-serve (CPU)" \
      org.opencontainers.image.description="Low-dose CT denoising server (ONNX Runtime CPU)"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /usr/local/bin/ldct-serve /usr/local/bin/ldct-serve
COPY --from=ort /ort/lib/ /opt/onnxruntime/lib/
RUN groupadd --gid 10001 ldct \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ldct \
    && mkdir -p /models \
    && chown 10001:10001 /models
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    LDCT_MODELS=/models \
    LDCT_BIND=0.0.0.0:8080 \
    LDCT_DEVICE=cpu
USER 10001:10001
EXPOSE 8080
# No curl in the image: bash's /dev/tcp asks /v2/health/live.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /v2/health/live HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/ldct-serve"]
