# syntax=docker/dockerfile:1.7
# The model service built with `--features cuda` on an nvidia/cuda base (m4 and m5 in
# docker-compose.gpu.yml). Needs the NVIDIA Container Toolkit on the host to run.
#   docker build -f docker/inference-cuda.Dockerfile --build-arg CUDA_COMPUTE_CAP=86 -t polyllm-inference-cuda .
# CUDA_COMPUTE_CAP: 80 = A100, 86 = RTX 30xx/A10, 89 = RTX 40xx/L4, 90 = H100 (no GPU is
# visible while building, so candle cannot detect it).
ARG CUDA_VERSION=12.4.1
ARG UBUNTU=ubuntu22.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/* \
 && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=polyllm-target-cuda \
    cargo build --release --locked -p inference -p polyllm-fetch --features inference/cuda --bins \
 && mkdir -p /out \
 && cp target/release/inference target/release/fetch-models /out/

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin polyllm \
 && mkdir -p /models && chown polyllm:polyllm /models
COPY --from=build /out/ /usr/local/bin/
USER 10001
WORKDIR /models
VOLUME ["/models"]
ENV HOST=0.0.0.0 PORT=8104 DEVICE=cuda MODELS_DIR=/models LOG_FORMAT=json \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 8104
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" >/dev/null || exit 1
ENTRYPOINT ["inference"]
