# captionq image: API, GPU worker and IO worker share it (the command picks the role).
# Build for GPU hosts with a CUDA base and the gpu extra:
#   docker build --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 --build-arg EXTRAS=gpu .
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/models/hf \
    CAPTIONQ_DATA_DIR=/var/lib/captionq \
    NUMBA_CACHE_DIR=/var/lib/captionq/numba-cache

RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && \
      rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --create-home --uid 10001 captionq \
 && mkdir -p /models /var/lib/captionq && chown captionq /models /var/lib/captionq

WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY models ./models
COPY storage ./storage
COPY jobs ./jobs
COPY core ./core
COPY cli ./cli
COPY migrations ./migrations
RUN python3 -m pip install --upgrade pip \
 && if [ -n "$EXTRAS" ]; then python3 -m pip install ".[${EXTRAS}]"; else python3 -m pip install .; fi

USER captionq
# 8000: the API; 9100 / 9101: a worker's /metrics and /healthz (CAPTIONQ_WORKER_METRICS_PORT,
# CAPTIONQ_WORKER_HEALTH_PORT).
EXPOSE 8000 9100 9101
# The role's own probe: a worker's /healthz when CAPTIONQ_WORKER_HEALTH_PORT is set, else the
# API's on CAPTIONQ_PORT. A worker container without a health port has no probe to answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=2m CMD ["captionq", "healthcheck"]
ENTRYPOINT ["captionq"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
