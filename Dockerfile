# The service's image; `docker compose up` builds it (docs/operations.md, "Deployment").
# The same Python as the tests run on; slim: no compiler, no apt packages needed at run time.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with the dependencies, then the project -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /app

# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when they
# change, not on every change of the code.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# The code runs from /app, next to its migrations (config.ROOT); the editable install only
# adds the package's metadata (its version, for GET /) and a path to /app to the venv.
COPY README.md config.py wsgi.py ./
COPY backend/ backend/
COPY migrations/ migrations/
RUN pip install --no-cache-dir --no-deps -e . \
    && python -m compileall -q backend migrations config.py wsgi.py

# --- runtime: the venv and the code, run by an unprivileged user ---------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_ENV=production \
    INSTANCE_PATH=/app/instance
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# Owned by root and read-only to the app: only instance/ (the audit spool; a volume in
# docker-compose.yml) is the app's to write.
COPY --from=build /app /app
WORKDIR /app
RUN mkdir instance && chown app:app instance
# Numeric, so that a runtime checking for a non-root user (Kubernetes' runAsNonRoot) can tell.
USER 10001:10001

EXPOSE 8000
# Liveness only: /healthz touches no database (readiness is /readyz, for load balancers).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
# Migrate, make sure an admin exists, then exec gunicorn (backend/boot.py); gunicorn is then
# PID 1 and gets `docker stop`'s SIGTERM itself.
CMD ["python", "-m", "backend.boot"]
