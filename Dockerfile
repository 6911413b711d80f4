# Lectern on a Hugging Face Space (Docker SDK): redis + gunicorn/uvicorn API + arq worker under supervisord.
FROM python:3.11-slim

# redis-server is the embedded queue/cache when REDIS_URL is not set.
# DL3008 (pin apt versions) ignored on purpose: Debian drops superseded package versions from its
# archive after security updates, so a pinned version breaks future rebuilds; the base image tag
# already fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*

# Spaces run the container as uid 1000.
RUN useradd -m -u 1000 user
# DL3066 (non-numeric USER) ignored on purpose: "user" is created just above with the fixed uid 1000
# that Spaces expect, and the name is what Hugging Face's Docker Spaces guide uses.
# hadolint ignore=DL3066
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=7860 \
    DATA_DIR=/home/user/app/data
WORKDIR $HOME/app

COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=user . .

EXPOSE 7860
CMD ["scripts/start"]
