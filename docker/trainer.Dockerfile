# syntax=docker/dockerfile:1.7
# `trainer` (crate trainer), a one-shot tool: run it with `docker compose run --rm trainer ...`
# (profile "tools" in docker-compose.yml).
#   docker build -f docker/trainer.Dockerfile -t polyllm-trainer .
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=polyllm-target-trainer \
    cargo build --release --locked -p trainer --bin trainer \
 && mkdir -p /out && cp target/release/trainer /out/

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin polyllm \
 && mkdir -p /data && chown polyllm:polyllm /data
COPY --from=build /out/trainer /usr/local/bin/trainer
WORKDIR /data
USER 10001
# A one-shot tool: there is no server to health-check.
HEALTHCHECK NONE
ENTRYPOINT ["trainer"]
