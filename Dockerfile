# syntax=docker/dockerfile:1
#
# derp-fleet image: derper (the relay), stunner (standalone STUN) and loadtest (probe and load
# tests), on a distroless base: no shell, no package manager, runs as uid 65532 and needs no
# writable path but its volumes (the chart mounts the key/ACME volume at /var/lib/derper and an
# emptyDir at /tmp), so it runs with a read-only root filesystem.
#
#   docker build -t ghcr.io/example/derp-fleet:0.1.0 .
#   docker run --rm --read-only -p 443:443 -p 80:80 -p 3478:3478/udp \
#     --sysctl net.ipv4.ip_unprivileged_port_start=0 \
#     -v derper:/var/lib/derper ghcr.io/example/derp-fleet:0.1.0 \
#     --hostname=derp.example.com --certmode=letsencrypt --certdir=/var/lib/derper/acme

ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-trixie
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian13:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Registry and target caches persist between builds (BuildKit); the binaries are copied out
# in the same step because the cache mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p derper -p stunner -p loadtest \
    && mkdir -p /out \
    && cp target/release/derper target/release/stunner target/release/loadtest /out/

# An empty, non-root-owned state directory: a volume mounted here inherits nothing, but
# `docker run` without one still gets a writable place for the key.
FROM ${RUST_IMAGE} AS state
RUN mkdir -p /state/var/lib/derper && chown -R 65532:65532 /state/var/lib/derper

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="derp-fleet" \
      org.opencontainers.image.description="DERP relay (drop-in for Tailscale's derper), STUN server and load tester" \
      org.opencontainers.image.licenses="BSD-3-Clause"
COPY --from=build /out/derper /out/stunner /out/loadtest /usr/local/bin/
COPY --from=state --chown=65532:65532 /state/var/lib/derper /var/lib/derper
USER 65532:65532
WORKDIR /var/lib/derper
EXPOSE 443/tcp 80/tcp 3478/udp 9464/tcp
ENTRYPOINT ["/usr/local/bin/derper"]
CMD ["--help"]
