# recoffer service image: multi-stage, non-root, models and data as volumes.
# Build: docker build -t recoffer .
# The trainer's image for the Spark engine (deploy/kubernetes/components/spark-on-kubernetes):
#        docker build --build-arg EXTRAS=spark --build-arg JAVA=1 -t recoffer:0.1.0-spark .
# Run:   see README.md ("Docker").

FROM python:3.11-slim AS build
# optional extras of pyproject.toml, comma-separated (e.g. spark); none by default
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# dependencies first, in their own layer: it changes only when pyproject.toml does
COPY pyproject.toml README.md ./
RUN mkdir -p service training \
    && touch service/__init__.py training/__init__.py \
    && pip install ".${EXTRAS:+[$EXTRAS]}" \
    && pip uninstall -y recoffer
# then the project itself (the same pip install the README's tasks.py runs, without dev extras)
COPY service ./service
COPY training ./training
RUN pip install --no-deps .

FROM python:3.11-slim AS runtime
# a Java runtime for pyspark (JAVA=1, with EXTRAS=spark) and PostgreSQL's JDBC driver
# (/usr/share/java/postgresql.jar: the Spark engine reads --database-url through it); not in
# the API's image by default
ARG JAVA=""
RUN if [ -n "$JAVA" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends default-jre-headless libpostgresql-jdbc-java \
        && rm -rf /var/lib/apt/lists/*; \
    fi
RUN useradd --create-home --uid 10001 recoffer \
    && mkdir -p /data /models \
    && chown recoffer:recoffer /data /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    RECOFFER_MODEL_DIR=/models \
    RECOFFER_DATABASE_URL=sqlite:////data/recoffer.db \
    RECOFFER_HOST=0.0.0.0 \
    RECOFFER_PORT=8000
USER recoffer
WORKDIR /home/recoffer
VOLUME ["/data", "/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
# the API's own entry point: nothing of the trainer is loaded in its workers
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
