# shardfeed. CPU base by default. A CUDA build uses a base image that already has torch:
#   docker build --build-arg BASE=<a pytorch CUDA runtime image> --build-arg TORCH=skip .
# TORCH_INDEX may name a wheel index (such as PyTorch's CPU-only one) to keep the image small.
# DataLoader workers hand batches over in shared memory (/dev/shm, 64 MB by default in Docker):
# run with --shm-size=1g (batch x image_size^2 x 3 bytes x 16 buffers x workers, with room to
# spare; docker-compose.yml sets shm_size) or --ipc=host.
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
