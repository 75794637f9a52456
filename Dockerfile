# One image for every gateway process: the API, the reconciler, the Celery worker and beat, the Prefect runner,
# Flower. Never built on the development machines (no Docker engine there): see docs/operations.md for what was
# and was not checked.
FROM python:3.11-slim
# git: checkouts of student and reference repositories. bubblewrap: the default sandbox (SANDBOX_ISOLATION=bwrap),
# whose namespaces the worker container must be allowed to create (docs/operations.md: cap_add, security_opt).
# The sandbox drops to the unprivileged `sandbox` user (the worker runs as root in the container only to be able
# to drop; Linux does not enforce RLIMIT_NPROC for root).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin sandbox
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY common ./common
COPY backends ./backends
COPY gateway ./gateway
COPY migrations ./migrations
# A non-editable install: the migrations ship as the package `gateway_migrations` (from migrations/), no alembic.ini.
RUN pip install --no-cache-dir -c constraints.txt . && rm -rf /app/common /app/backends /app/gateway /app/migrations
# The setting and the user agree (the default elsewhere is `nobody`).
ENV GATEWAY_DATA_DIR=/data \
    SANDBOX_USER=sandbox
RUN mkdir -p /data
VOLUME ["/data"]
CMD ["gateway", "serve", "--host", "0.0.0.0"]
