# syntax=docker/dockerfile:1.7
# The router, serving the UI (built from ui/ with `npm run build`) at /.
#   docker build -f docker/router.Dockerfile -t polyllm-router .
ARG RUST_IMAGE=rust:1-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${NODE_IMAGE} AS ui
WORKDIR /ui
COPY ui/package.json ui/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY ui/ ./
RUN npm run build

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
    --mount=type=cache,target=/src/target,id=polyllm-target-router \
    cargo build --release --locked -p router --bin router \
 && mkdir -p /out && cp target/release/router /out/

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin polyllm \
 && mkdir -p /app /var/log/polyllm && chown polyllm:polyllm /var/log/polyllm
COPY --from=build /out/router /usr/local/bin/router
COPY --from=ui /ui/dist /app/ui/dist
COPY models.toml /app/models.toml
COPY router/model /app/router/model
WORKDIR /app
USER 10001
ENV HOST=0.0.0.0 PORT=8080 UI_DIR=/app/ui/dist BACKENDS=/app/models.toml \
    ROUTER_MODEL=/app/router/model EMBEDDER_DIR=/models/all-MiniLM-L6-v2
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" >/dev/null || exit 1
ENTRYPOINT ["router"]
