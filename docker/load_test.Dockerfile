# syntax=docker/dockerfile:1.7
# `load_test` (crate benchmarks), a one-shot tool: run it with `docker compose run --rm load_test ...`
# (profile "tools" in docker-compose.yml).
#   docker build -f docker/load_test.Dockerfile -t polyllm-load_test .
# BINARIES=source (default) compiles in RUST_IMAGE; BINARIES=host takes the binary built on the
# host from docker/.host/bin (scripts/compose-test.sh).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARIES=source

FROM ${RUST_IMAGE} AS bins-source
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=polyllm-target-load_test \
    cargo build --release --locked -p benchmarks --bin load_test \
 && mkdir -p /out && cp target/release/load_test /out/

FROM scratch AS bins-host
COPY docker/.host/bin/load_test /out/load_test

FROM bins-${BINARIES} AS bins

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin polyllm \
 && mkdir -p /data && chown polyllm:polyllm /data
COPY --from=bins /out/load_test /usr/local/bin/load_test
COPY datasets/prompts /data/datasets/prompts
WORKDIR /data
USER 10001
# A one-shot tool: there is no server to health-check.
HEALTHCHECK NONE
ENTRYPOINT ["load_test"]
