# One image for every gateway process: the API, the Celery worker and beat, the Prefect runner, Flower.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY gateway ./gateway
COPY backends ./backends
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --create-home sandbox
ENV GATEWAY_DATA_DIR=/data
VOLUME ["/data"]
CMD ["gateway", "serve"]
