# Test stand-in for the `prom/prometheus` image, which cannot be pulled on the project's test
# machines: Debian's Prometheus on the locally imported Debian base (scripts/compose-test.sh).
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus wget tini \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus
EXPOSE 9090
ENTRYPOINT ["tini", "--", "/usr/bin/prometheus"]
