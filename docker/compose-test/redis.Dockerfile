# Test stand-in for the `redis:7-alpine` image, which cannot be pulled on the project's test
# machines: Debian's Redis 7 on the locally imported Debian base (scripts/compose-test.sh).
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
