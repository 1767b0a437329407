# CyberImage in a container: CPU inference, data in the /data volume.
#
#   docker build -t cyberimage .
#   docker run -p 127.0.0.1:5050:5050 -v cyberimage-data:/data cyberimage
#
# Inside the container the server listens on 0.0.0.0:5050 so the port can
# be published; it prints a loud warning at start when no API key is set.
# Publish it on 127.0.0.1 (as above) or set keys:
#   -e CYBERIMAGE_AUTH__API_KEY_SHA256='["<cyberimage hash-key YOUR-KEY>"]'
# NVIDIA GPUs: Dockerfile.cuda.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a change to our code does not rebuild candle.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY fixtures fixtures
COPY config.example.toml ./
RUN cargo build --release --locked --bin cyberimage \
 && strip target/release/cyberimage

FROM debian:bookworm-slim
# ca-certificates: HTTPS to Hugging Face and chat endpoints; curl: the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --user-group --create-home --home-dir /home/cyberimage cyberimage \
 && mkdir /data && chown 1000:1000 /data
COPY --from=build /src/target/release/cyberimage /usr/local/bin/cyberimage
USER 1000:1000
ENV CYBERIMAGE_DATA_DIR=/data \
    HF_HOME=/data/huggingface \
    RUST_LOG=info
VOLUME /data
EXPOSE 5050
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:5050/health | grep -q healthy || exit 1
ENTRYPOINT ["cyberimage"]
CMD ["serve", "--bind", "0.0.0.0:5050"]
