# twilio-dg-proxy: docker build -t twilio-dg-proxy . && docker run -p 5000:5000 --env-file .env twilio-dg-proxy
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=5000

# Extras to install: twilio (signature checks), redis (REDIS_URL scale-out), webhooks
# (WEBHOOK_URL), postgres (transcripts in PostgreSQL: DATABASE_URL), offline (the offline
# engine, for `python -m twilio_dg_proxy engine`; large).
ARG EXTRAS=twilio,redis,webhooks,postgres

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# DL3013 asks to pin what pip installs: this is the project itself, whose dependencies are
# ranges in pyproject.toml (there is no lock file to pin them with).
# hadolint ignore=DL3013
RUN pip install ".[${EXTRAS}]" && useradd --system --uid 10001 --no-create-home proxy \
    && mkdir /data && chown 10001 /data

# The proxy runs in /data, which its user may write: stored transcripts (TRANSCRIPTS_FILE,
# relative to it, without DATABASE_URL) land there. Mount a volume to keep them.
WORKDIR /data
VOLUME /data

USER 10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '5000')}/healthz\", timeout=2)"]
# --host wins over a HOST=127.0.0.1 copied from .env.example, which would be unreachable.
CMD ["python", "-m", "twilio_dg_proxy", "--host", "0.0.0.0"]
