# ledgerd: build in the Rust image, run as a non-root user in a slim image.
FROM rust:1-bookworm AS build
WORKDIR /src
# Cargo reads every target the manifest names (the [[test]] entries
# included), so the tests come along although only the binary is built.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
# The image ships a stripped binary without debug info (the release profile
# keeps line tables for local profiling).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=true
RUN cargo build --release --locked --bin ledgerd

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/ledgerd ledgerd
COPY --from=build /src/target/release/ledgerd /usr/local/bin/ledgerd
USER ledgerd
WORKDIR /var/lib/ledgerd
# MALLOC_ARENA_MAX: SQLite allocates from glibc, which gives each thread an
# arena of its own for the life of the process; two keep a months-long
# worker's memory level. MIMALLOC_ALLOW_THP: ledgerd's own heap (mimalloc)
# holds about 20 MiB less without transparent huge pages (docs/operations.md,
# Memory).
ENV LEDGERD_LOG_FORMAT=json \
    LEDGERD_METRICS_ADDR=0.0.0.0:9464 \
    MALLOC_ARENA_MAX=2 \
    MIMALLOC_ALLOW_THP=0
EXPOSE 9464
# Liveness: the process answers. (Readiness, /readyz, is for orchestrators.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:9464/healthz || exit 1
ENTRYPOINT ["ledgerd"]
CMD ["run"]
