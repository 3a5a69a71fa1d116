# Roomcast gateway image: build with cargo, run on distroless (glibc, no shell, non-root).
#   docker build -t roomcast-gateway .
#   docker run --rm -p 3000:3000 -p 127.0.0.1:3001:3001 -p 9090:9090 roomcast-gateway --dev
# The same image runs the Postgres outbox relay: --entrypoint /usr/local/bin/roomcast-relay.
# Plain Dockerfile syntax only (no `# syntax=` frontend, no RUN --mount): it builds with the
# classic builder and with BuildKit/buildx alike, without fetching a frontend image. The
# release workflow (.github/workflows/release.yml) builds it for linux/amd64 and linux/arm64.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, with placeholder sources: the layer holding the compiled dependencies
# (target/ and the cargo registry) is reused until a manifest, Cargo.lock or the patched crates
# change, so source edits rebuild only Roomcast itself.
COPY Cargo.toml Cargo.lock ./
COPY gateway/Cargo.toml gateway/
COPY publisher-sdk/Cargo.toml publisher-sdk/
COPY relay/Cargo.toml relay/
COPY loadtests/Cargo.toml loadtests/
# The patched engine crates ([patch.crates-io] in Cargo.toml; vendor/PATCHES.md).
COPY vendor/engineioxide vendor/engineioxide
COPY vendor/engineioxide-core vendor/engineioxide-core
COPY vendor/socketioxide vendor/socketioxide
RUN mkdir -p gateway/src publisher-sdk/src relay/src loadtests/src \
    && echo 'fn main() {}' > gateway/src/main.rs && touch gateway/src/lib.rs \
    && echo 'fn main() {}' > relay/src/main.rs && touch relay/src/lib.rs \
    && touch publisher-sdk/src/lib.rs && echo 'fn main() {}' > loadtests/src/main.rs
RUN cargo build --release --locked -p roomcast-gateway -p roomcast-relay
COPY gateway gateway
COPY publisher-sdk publisher-sdk
COPY relay relay
# COPY keeps the sources' timestamps, which may be older than the placeholders' build: touch
# them so cargo rebuilds Roomcast's own crates (and only those).
RUN touch gateway/src/main.rs gateway/src/lib.rs publisher-sdk/src/lib.rs relay/src/main.rs relay/src/lib.rs \
    && cargo build --release --locked -p roomcast-gateway -p roomcast-relay \
    && install -D target/release/roomcast-gateway /out/roomcast-gateway \
    && install -D target/release/roomcast-relay /out/roomcast-relay

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/roomcast-gateway /usr/local/bin/roomcast-gateway
COPY --from=build /out/roomcast-relay /usr/local/bin/roomcast-relay
# Public (Socket.IO), backend API (POST /v1/publish; keep it internal) and admin (/healthz,
# /readyz, /metrics) listeners.
EXPOSE 3000 3001 9090
ENV ROOMCAST_LOG_FORMAT=json
# The gateway drains on SIGTERM: unready at once, clients moved after ROOMCAST_DRAIN_DELAY,
# exit within ROOMCAST_SHUTDOWN_TIMEOUT.
STOPSIGNAL SIGTERM
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/roomcast-gateway"]
