# shardfeed. CPU base by default. A CUDA build uses a base image that already has torch:
#   docker build --build-arg BASE=<a pytorch CUDA runtime image> --build-arg TORCH=skip .
# TORCH_INDEX may name a wheel index (such as PyTorch's CPU-only one) to keep the image small.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH=2.13.0
ARG TORCH_INDEX=
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN if [ "$TORCH" != "skip" ]; then \
      pip install "torch==${TORCH}" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}; \
    fi
COPY pyproject.toml setup.py README.md ./
COPY shards ./shards
COPY loader ./loader
COPY server ./server
RUN pip install .
RUN useradd --create-home --uid 1000 shardfeed && mkdir -p /data && chown shardfeed /data
USER shardfeed
VOLUME ["/data"]
EXPOSE 8000
CMD ["shardfeed", "serve", "--host", "0.0.0.0", "--port", "8000", "--db", "/data/shardfeed.db", "--data-root", "/data"]
