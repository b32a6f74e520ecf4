# syntax=docker/dockerfile:1.7
# The router, serving the UI (built from ui/ with `npm run build`) at /.
#   docker build -f docker/router.Dockerfile -t polyllm-router .
# BINARIES=source (default) compiles in RUST_IMAGE and builds the UI in NODE_IMAGE; BINARIES=host
# takes the router binary and the built UI from docker/.host (scripts/compose-test.sh, on machines
# that cannot pull those images). The router needs no C++ toolchain: its LightGBM predictor is Rust.
ARG RUST_IMAGE=rust:1-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARIES=source

FROM ${NODE_IMAGE} AS ui
WORKDIR /ui
COPY ui/package.json ui/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY ui/ ./
RUN npm run build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=polyllm-target-router \
    cargo build --release --locked -p router --bin router \
 && mkdir -p /out && cp target/release/router /out/

FROM scratch AS bins-source
COPY --from=build /out/router /out/router
COPY --from=ui /ui/dist /out/ui

FROM scratch AS bins-host
COPY docker/.host/bin/router /out/router
COPY docker/.host/ui /out/ui

FROM bins-${BINARIES} AS bins

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin polyllm \
 && mkdir -p /app /var/log/polyllm && chown polyllm:polyllm /var/log/polyllm
COPY --from=bins /out/router /usr/local/bin/router
COPY --from=bins /out/ui /app/ui/dist
COPY models.toml /app/models.toml
# Owned by the service user: the compose file mounts a volume here that `trainer train` writes
# and the router hot-reloads (a new volume takes this content and ownership).
COPY --chown=10001:10001 router/model /app/router/model
WORKDIR /app
USER 10001
ENV HOST=0.0.0.0 PORT=8080 UI_DIR=/app/ui/dist BACKENDS=/app/models.toml \
    ROUTER_MODEL=/app/router/model EMBEDDER_DIR=/models/all-MiniLM-L6-v2
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" >/dev/null || exit 1
ENTRYPOINT ["tini", "--", "router"]
