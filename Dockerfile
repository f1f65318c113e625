# syntax=docker/dockerfile:1
# One image per task:   docker build --build-arg TASK=brasyn -t brainsyn/brasyn .
# Run (BraTS contract): docker run --gpus all --network none -v IN:/input:ro -v OUT:/output brainsyn/brasyn
# Versions are pinned in requirements.txt only; TORCH_INDEX picks the CUDA build of the same torch pin.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TASK=brasyn
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# Optional: fetch the task's weights (a .tar.gz of a checkpoint folder) at build time instead of weights/<task>.
ARG WEIGHTS_URL=
ARG WEIGHTS_SHA256=
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" -r /tmp/requirements.txt
COPY weights/${TASK} /opt/weights/${TASK}
RUN if [ -n "${WEIGHTS_URL}" ]; then \
      curl -fsSL "${WEIGHTS_URL}" -o /tmp/weights.tar.gz \
      && echo "${WEIGHTS_SHA256}  /tmp/weights.tar.gz" | sha256sum -c - \
      && rm -rf "/opt/weights/${TASK}" && mkdir -p "/opt/weights/${TASK}" \
      && tar -xzf /tmp/weights.tar.gz -C "/opt/weights/${TASK}" && rm /tmp/weights.tar.gz; \
    fi \
 && test -f "/opt/weights/${TASK}/config.json"

FROM ${CUDA_IMAGE}
ARG TASK=brasyn
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY conventions /app/conventions
COPY models /app/models
COPY infer /app/infer
COPY docker/run_task.sh /app/docker/run_task.sh
COPY docker/${TASK}/entrypoint.sh /app/entrypoint.sh
COPY --from=build /opt/weights/${TASK} /app/weights/${TASK}
# Any uid:gid may run the image with a read-only root filesystem (`--read-only` alone, no --tmpfs): code is
# world-readable; caches and temporary files go to /dev/shm, the in-memory folder that Docker mounts writable in
# every container (never to /output, which must hold the outputs only).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/dev/shm/brainsyn \
    TMPDIR=/dev/shm \
    TORCH_HOME=/dev/shm/brainsyn/torch \
    TRITON_CACHE_DIR=/dev/shm/brainsyn/triton \
    MPLCONFIGDIR=/dev/shm/brainsyn/matplotlib \
    XDG_CACHE_HOME=/dev/shm/brainsyn/cache \
    BRAINSYN_INPUT=/input \
    BRAINSYN_OUTPUT=/output
RUN mkdir -p /input /output && chmod -R a+rX /app && chmod a+rwx /output
ENTRYPOINT ["/app/entrypoint.sh"]
