# pipgate: a caching, verifying PyPI proxy.
#   docker build -t pipgate .
#   docker run -p 3141:3141 -v pipgate-cache:/var/cache/pipgate pipgate
# The base image is pinned by digest (the multi-arch index of python:3.11-slim-bookworm),
# so a rebuild gets the same bytes. To move to a newer one:
#   docker buildx imagetools inspect python:3.11-slim-bookworm   (the "Digest:" line)
FROM python:3.11-slim-bookworm@sha256:b18992999dbe963a45a8a4da40ac2b1975be1a776d939d098c647482bcad5cba

LABEL org.opencontainers.image.title="pipgate" \
      org.opencontainers.image.description="Caching, verifying PyPI proxy for firewalled networks" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/pipgate/pipgate"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIPGATE_HOST=0.0.0.0 \
    PIPGATE_PORT=3141 \
    PIPGATE_CACHE_DIR=/var/cache/pipgate \
    PIPGATE_LOG_FORMAT=json

WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY server ./server
# Every dependency (and the build backend) from the lock file, each checked against its
# recorded sha256; then pipgate itself without resolving anything. Its extras are in the
# lock: [prefetch] (uv, rich, for `pipgate prefetch` in the container) and [scale]
# (aiobotocore, redis: replicas sharing an S3 bucket, coordinated through Redis).
RUN pip install --require-hashes --no-deps -r requirements.lock \
    && pip install --no-deps --no-build-isolation ".[prefetch,scale]" && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/cache/pipgate --shell /usr/sbin/nologin pipgate \
    && mkdir -p /var/cache/pipgate /etc/pipgate \
    && chown pipgate:pipgate /var/cache/pipgate

WORKDIR /var/cache/pipgate
USER pipgate
VOLUME ["/var/cache/pipgate"]
EXPOSE 3141

# A TOML file mounted at /etc/pipgate/pipgate.toml is used when PIPGATE_CONFIG points at it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:3141/healthz', timeout=4).status == 200 else 1)"

ENTRYPOINT ["pipgate"]
CMD ["serve"]
