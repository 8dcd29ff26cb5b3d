# The emosation binary: every service, picked by subcommand.
#   docker build -t emosation .
#   docker run -p 8080:8080 emosation            # all-in-one on embedded engines
FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p emosation \
 && cp target/release/emosation /usr/local/bin/emosation

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/emosation /usr/local/bin/emosation
ENV EMOSATION_LISTEN=0.0.0.0:8080 \
    EMOSATION_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=12 CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["emosation"]
CMD ["serve"]
