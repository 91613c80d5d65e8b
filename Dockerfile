FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the runtime needs, so .venv/.cache/var never reach the image. Editable, so
# that the codec finds the Avro contract in /app/schemas.
COPY pyproject.toml ./
COPY schemas ./schemas
COPY pipeline ./pipeline
COPY topics ./topics
COPY admin_api ./admin_api
RUN pip install -e .

CMD ["pipeline", "run"]
