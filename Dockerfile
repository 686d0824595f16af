# Container image of flupd: a release build on a small Debian runtime.
#
#   docker build -t flupd .
#   docker run -d --name flupd -v flupd-state:/var/lib/flupd \
#     -e FLUPD_LUFTHANSA__CLIENT_ID=... -e FLUPD_LUFTHANSA__CLIENT_PREFIX=... \
#     -e FLUPD_MQTT__TOPICS=prd/FlightUpdate/LH/# -e FLUPD_CLIENT_SECRET=... flupd
#
# docs/operations.md describes the configuration and the health check.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY . .
# The workspace's stand-in crate is only a dev-dependency and the demo
# feature is off, so the release binary contains no test code.
RUN cargo build --release --locked --bin flupd \
    && install -D -m 0755 target/release/flupd /out/flupd

FROM debian:${DEBIAN_RELEASE}-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="flupd" \
      org.opencontainers.image.description="Receives Lufthansa flight update notifications over MQTT and delivers them to stdout, files and webhooks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/operations.md"

# ca-certificates: flupd trusts the system roots for Lufthansa's API and broker.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 flupd \
    && useradd --system --uid 10001 --gid flupd --home-dir /var/lib/flupd --shell /usr/sbin/nologin flupd \
    && install -d -o flupd -g flupd -m 0700 /var/lib/flupd

COPY --from=builder /out/flupd /usr/bin/flupd
COPY docker/flupd.toml /etc/flupd/flupd.toml

USER flupd:flupd
VOLUME /var/lib/flupd
EXPOSE 9188
# flupd drains its sinks on SIGTERM within shutdown_timeout (10s by default),
# so the runtime's stop timeout must be longer.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=2m --retries=3 \
    CMD ["/usr/bin/flupd", "health"]
ENTRYPOINT ["/usr/bin/flupd"]
CMD ["run"]
