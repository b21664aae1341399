# The livestream worker image (also runs `livestream gateway` and every other `livestream` command).
#   docker build -t livestream .
#   docker run -e LIVESTREAM_KAFKA_BOOTSTRAP=kafka:9092 -e LIVESTREAM_REDIS_URL=redis://redis:6379/0 \
#     -v livestream-state:/var/lib/livestream -p 6066:6066 livestream
# Every setting is a LIVESTREAM_* environment variable (stream/settings.py). RocksDB state lives under the
# LIVESTREAM_DATA_DIR volume: keep it across restarts (a fresh one is rebuilt from the changelogs, slower).

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the package needs: a change to tests or docs does not rebuild this layer.
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY agents ./agents
COPY schemas ./schemas
COPY livestream ./livestream
RUN python -m venv /opt/livestream \
    && /opt/livestream/bin/pip install --no-compile . \
    && /opt/livestream/bin/python -c "import rocksdict, faust, livestream.cli"

FROM python:3.11-slim-bookworm
# User 10001, numeric in `USER` below (Kubernetes' runAsNonRoot needs a numeric user).
RUN groupadd --system --gid 10001 livestream \
    && useradd --system --uid 10001 --gid livestream --home-dir /var/lib/livestream --shell /usr/sbin/nologin livestream \
    && mkdir -p /var/lib/livestream /etc/livestream \
    && chown livestream:livestream /var/lib/livestream
COPY --from=build /opt/livestream /opt/livestream
COPY deploy/alerts.toml /etc/livestream/alerts.toml
ENV PATH=/opt/livestream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LIVESTREAM_DATA_DIR=/var/lib/livestream \
    LIVESTREAM_WEB_HOST=0.0.0.0 \
    LIVESTREAM_WEB_PORT=6066 \
    LIVESTREAM_GATEWAY_HOST=0.0.0.0 \
    LIVESTREAM_GATEWAY_PORT=8080 \
    LIVESTREAM_ALERT_RULES=/etc/livestream/alerts.toml
VOLUME ["/var/lib/livestream"]
USER 10001:10001
WORKDIR /var/lib/livestream
EXPOSE 6066 8080
# /readyz: 200 once the worker holds a recovered assignment and no owned partition is stalled.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=4 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('LIVESTREAM_WEB_PORT', '6066'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["livestream"]
CMD ["worker"]
