# flowgate's container image: the binary built from source, then run from a
# slim Debian as a non-root user with the example flows.
#
#   docker build -t flowgate .            # or: podman build --format docker -t flowgate .
#   docker run -d --name flowgate -p 8080:8080 --stop-timeout 45 \
#     -v "$PWD/deploy/signing-key:/run/secrets/flowgate_signing_key:ro" \
#     -v flowgate-data:/var/lib/flowgate flowgate
#   docker exec flowgate flowgate token issue signup
#
# (docs/deploy.md: making the key once, readable by uid 10001.)
#
# Configuration: /etc/flowgate/config.toml (deploy/container/config.toml),
# overridden by FLOWGATE_* variables; flows and templates under
# /etc/flowgate/flows and /etc/flowgate/templates (mount yours over them);
# the embedded database on the /var/lib/flowgate volume. The base images are
# build arguments, so a build without a registry can pass local ones
# (scripts/check-image.sh does); FLOWGATE_COMMIT names the commit
# `flowgate --version` prints (there is no .git in the build context).

ARG BUILDER_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS build
ARG FLOWGATE_COMMIT=unknown
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY scripts/build.rs scripts/build.rs
COPY src src
COPY benches benches
RUN FLOWGATE_COMMIT="${FLOWGATE_COMMIT}" cargo build --release --locked --bin flowgate \
 && install -D -m 0755 target/release/flowgate /out/usr/local/bin/flowgate \
 && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/usr/local/bin/flowgate /usr/local/bin/flowgate
COPY --from=build /out/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# The database's folder, the image user's alone (COPY would make it 0755).
RUN install -d -o 10001 -g 10001 -m 0700 /var/lib/flowgate
COPY deploy/container/config.toml /etc/flowgate/config.toml
COPY flows /etc/flowgate/flows
COPY templates /etc/flowgate/templates
# No shell or curl needed: the binary probes its own /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/flowgate", "healthcheck"]
# SIGTERM drains for server.shutdown_grace (30 s): stop with a longer
# timeout (docker run --stop-timeout 45, compose stop_grace_period: 45s).
STOPSIGNAL SIGTERM
USER 10001:10001
WORKDIR /etc/flowgate
VOLUME ["/var/lib/flowgate"]
EXPOSE 8080
ENV RUST_LOG=info
ENTRYPOINT ["/usr/local/bin/flowgate"]
CMD ["serve"]
