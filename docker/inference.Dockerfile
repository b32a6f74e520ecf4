# syntax=docker/dockerfile:1.7
# The model service (`inference`) and `fetch-models`, CPU build. The CUDA build is
# docker/inference-cuda.Dockerfile (used by docker-compose.gpu.yml for m4 and m5).
#   docker build -f docker/inference.Dockerfile -t polyllm-inference .
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=polyllm-target-cpu \
    cargo build --release --locked -p inference --bins \
 && mkdir -p /out \
 && cp target/release/inference target/release/fetch-models /out/

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin polyllm \
 && mkdir -p /models && chown polyllm:polyllm /models
COPY --from=build /out/ /usr/local/bin/
USER 10001
WORKDIR /models
# /models is owned by the service user, so a fresh named volume mounted there is writable by
# the `models` init service (Docker copies the ownership into a new volume).
VOLUME ["/models"]
ENV HOST=0.0.0.0 PORT=8101 DEVICE=cpu MODELS_DIR=/models LOG_FORMAT=json
EXPOSE 8101
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" >/dev/null || exit 1
ENTRYPOINT ["inference"]
