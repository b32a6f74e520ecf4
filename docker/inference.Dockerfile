# syntax=docker/dockerfile:1.7
# The model service (`inference`) and `fetch-models`, CPU build. The CUDA build is
# docker/inference-cuda.Dockerfile (used by docker-compose.gpu.yml for m4 and m5).
#   docker build -f docker/inference.Dockerfile -t polyllm-inference .
# BINARIES=source (default) compiles in RUST_IMAGE; BINARIES=host takes binaries built on the host
# from docker/.host/bin (scripts/compose-test.sh, on machines that cannot pull a Rust image).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARIES=source

FROM ${RUST_IMAGE} AS bins-source
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=polyllm-target-cpu \
    cargo build --release --locked -p inference -p polyllm-fetch --bins \
 && mkdir -p /out \
 && cp target/release/inference target/release/fetch-models /out/

FROM scratch AS bins-host
COPY docker/.host/bin/inference docker/.host/bin/fetch-models /out/

FROM bins-${BINARIES} AS bins

FROM ${RUNTIME_IMAGE}
# Extra CAs (a TLS-intercepting proxy's) for fetch-models: see docker/ca-certificates/README.md.
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/* \
 && update-ca-certificates >/dev/null \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin polyllm \
 && mkdir -p /models && chown polyllm:polyllm /models
COPY --from=bins /out/ /usr/local/bin/
USER 10001
WORKDIR /models
# /models is owned by the service user, so a fresh named volume mounted there is writable by
# the `models` init service (Docker copies the ownership into a new volume).
VOLUME ["/models"]
ENV HOST=0.0.0.0 PORT=8101 DEVICE=cpu MODELS_DIR=/models LOG_FORMAT=json
EXPOSE 8101
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" >/dev/null || exit 1
# tini as PID 1 forwards SIGTERM and reaps children, so `docker compose down` stops at once.
ENTRYPOINT ["tini", "--", "inference"]
