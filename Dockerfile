# One Dockerfile, three images, so the API never carries torch:
#   api       - FastAPI + migrations (no torch)
#   worker    - the Celery worker with CUDA PyTorch
#   dashboard - optuna-dashboard on the same storage
# Build: docker compose build (see docker-compose.yml).

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY samsweep ./samsweep
COPY service ./service
COPY worker ./worker
COPY trainer ./trainer
COPY migrations ./migrations

FROM base AS api
RUN pip install .
EXPOSE 8000
CMD ["samsweep", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
# CUDA build of torch first, pinned, from PyTorch's index; then the package, whose
# `torch>=2.4` requirement it satisfies. TORCH_INDEX selects the CUDA version.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
 && pip install ".[worker]"
CMD ["samsweep", "worker", "--concurrency", "1"]

FROM base AS dashboard
RUN pip install . "optuna-dashboard>=0.17"
EXPOSE 8080
