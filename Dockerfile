# syntax=docker/dockerfile:1
# The emosation binary: every service, picked by subcommand.
#   docker build -t emosation .
#   docker run -p 8080:8080 -v emosation-data:/data emosation   # all-in-one, embedded engines
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build directory between builds, so
# a change to the code rebuilds our crates, not the ~400 dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p emosation \
 && cp target/release/emosation /usr/local/bin/emosation \
 && strip /usr/local/bin/emosation

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl openssl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin emosation \
 && mkdir -p /data && chown emosation:emosation /data
COPY --from=build /usr/local/bin/emosation /usr/local/bin/emosation
ENV EMOSATION_LISTEN=0.0.0.0:8080 \
    EMOSATION_DATA_DIR=/data
USER emosation
WORKDIR /data
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=12 --start-period=60s CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["emosation"]
CMD ["serve"]
