# syntax=docker/dockerfile:1
# One image for every Quiver component on Kubernetes: `quiver operator`, `quiver router`,
# `quiver optimize` (the operator's Jobs) and the Ray head and workers (KubeRay runs
# `ray start` in it, so Ray, bash and the Serve replicas' code must all be here).
#
#   docker build -t quiver:0.1.0 .
#   docker build --build-arg EXTRAS=cuda -t quiver:0.1.0-cuda .   # CUDA libraries for GPU pools

ARG PYTHON=3.11

# Build stage: the wheel of this repository (setup.py generates quiver/_proto from protos/
# with grpcio-tools) and the wheels of all its dependencies at the versions CI passed with.
FROM python:${PYTHON}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
# PIP_CONSTRAINT also reaches the isolated build environment (grpcio-tools for the protos).
RUN PIP_CONSTRAINT=/src/constraints.txt pip wheel --wheel-dir /wheels .

# Runtime stage: the installed packages only; no compilers, no sources, no wheels left behind.
FROM python:${PYTHON}-slim
# "cuda" adds ONNX Runtime's CUDA and cuDNN runtime libraries (large) for GPU pools; without
# them a GPU variant falls back to the CPU with a warning.
ARG EXTRAS=""
# The root filesystem is read-only in the chart: caches go to /tmp (an emptyDir there), and
# bytecode is compiled at install time rather than written at run time.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache MPLCONFIGDIR=/tmp/matplotlib
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,source=constraints.txt,target=/constraints.txt \
    pip install --no-index --find-links=/wheels -c /constraints.txt quiver \
    && if [ "$EXTRAS" = "cuda" ]; then \
         pip install -c /constraints.txt "onnxruntime-gpu[cuda,cudnn]"; \
       fi \
    && groupadd --gid 1000 quiver \
    && useradd --uid 1000 --gid 1000 --home-dir /home/quiver --create-home --shell /bin/bash quiver
USER 1000:1000
WORKDIR /home/quiver
# gRPC (Open Inference Protocol), router metrics, operator liveness, Ray GCS and dashboard.
EXPOSE 8001 8002 8080 6379 8265
ENTRYPOINT ["quiver"]
CMD ["--help"]
