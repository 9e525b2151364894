# One image for the API and the workers of a scaled-out deployment (see docker-compose.yml).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app

# The CPU build of torch first, from PyTorch's CPU index: a bare `torch` requirement
# would pull the multi-GB CUDA build.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY tuner ./tuner
COPY api ./api
RUN pip install .

RUN useradd --create-home tuner && mkdir -p /data && chown tuner /data
USER tuner
EXPOSE 8000
CMD ["tuner", "serve", "--workers", "0"]
