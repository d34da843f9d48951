# The image k8s/convene.yaml names (convene/convene:0.1.0): built in one stage with the Rust
# toolchain, run from a small Debian image as an unprivileged user (uid 1001, as the manifests'
# securityContext says). Alone it serves the embedded default (SQLite under /var/lib/convene);
# on Kubernetes the settings come from config/kubernetes.toml, mounted at /etc/convene.
#   docker build -t convene/convene:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin convene \
    && strip target/release/convene

FROM debian:bookworm-slim
# ca-certificates for TLS to the database and brokers; the version is Debian's current one,
# so security updates arrive with each rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 1001 convene \
    && useradd --system --uid 1001 --gid convene --home-dir /var/lib/convene --create-home convene
COPY --from=build /src/target/release/convene /usr/local/bin/convene
USER 1001:1001
WORKDIR /var/lib/convene
ENV CONVENE_DATA_DIR=/var/lib/convene \
    CONVENE_LISTEN=0.0.0.0:8080
EXPOSE 8080 7000
ENTRYPOINT ["convene"]
CMD ["serve"]
