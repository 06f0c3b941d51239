# aggregator: the daemon (`aggregator run`) in a small, non-root image.
#
#   docker build -t aggregator .
#   docker run -d --init -p 8080:8080 -v aggregator-data:/data aggregator
#
# Or `docker compose up -d` (docker-compose.yml). See docs/deployment.md.
# Configuration is read from /config/feeds.toml ($AGGREGATOR_CONFIG); the image ships
# deploy/feeds.toml there, so mount your own folder over /config. Database and merged feeds
# live on the /data volume.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- builder: build the project's wheel and install it with its dependencies into a venv ---
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY aggregator ./aggregator
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /dist/*.whl

# --- final: the venv on a clean base, no build tools, no pip cache, no sources ---
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="aggregator" \
      org.opencontainers.image.description="Self-hosted RSS/Atom feed aggregator: polls feeds, deduplicates stories, publishes merged feeds." \
      org.opencontainers.image.licenses="MIT"

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGGREGATOR_CONFIG=/config/feeds.toml

# A fixed uid/gid, so the volume's owner is the same from one image to the next.
RUN groupadd --system --gid 10001 aggregator \
    && useradd --system --uid 10001 --gid aggregator --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin aggregator \
    && mkdir -p /data /config \
    && chown aggregator:aggregator /data

COPY --from=builder /opt/venv /opt/venv
COPY deploy/feeds.toml /config/feeds.toml

WORKDIR /data
# Database (aggregator.db, -wal, -shm) and merged feeds (public/). A new named volume takes
# this directory's owner (aggregator), so the daemon can write to it.
VOLUME ["/data"]

USER 10001:10001

# [server] port in /config/feeds.toml; its host must be 0.0.0.0 in a container.
EXPOSE 8080

# No curl in the image: the venv's Python asks /healthz, bypassing any HTTP(S)_PROXY set for
# fetching feeds; healthy only on 200 (an error status or no answer raises: exit 1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8080/healthz', timeout=4); sys.exit(r.status != 200)"]

# The daemon stops cleanly on SIGTERM (docker stop) and reloads its config on SIGHUP.
STOPSIGNAL SIGTERM
ENTRYPOINT ["aggregator"]
CMD ["run", "--config", "/config/feeds.toml"]
