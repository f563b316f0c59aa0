# Parakeet ASR worker for RunPod serverless (batch jobs + WebSocket streaming on one engine).
# Build:  docker build -t parakeet-worker .            (bakes nvidia/parakeet-tdt-0.6b-v3 into the image)
#         docker build --build-arg PARAKEET_MODEL=/app/models/my.nemo -t parakeet-worker .
# Run:    docker run --gpus all -p 8765:8765 -p 8000:8000 parakeet-worker
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG PARAKEET_MODEL=nvidia/parakeet-tdt-0.6b-v3
ARG TORCH_SPEC="torch==2.13.0"
ENV PARAKEET_MODEL=${PARAKEET_MODEL} \
    HF_HOME=/models/hf \
    PARAKEET_MODEL_CACHE=/models/extracted \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHON=/opt/venv/bin/python

WORKDIR /app
COPY docker/setup.sh docker/setup.sh
RUN bash docker/setup.sh system && python3 -m venv /opt/venv
COPY requirements.txt .
RUN TORCH_SPEC="${TORCH_SPEC}" bash docker/setup.sh python
COPY . .
# The model is fetched and unpacked at build time: a cold start downloads and unpacks nothing.
RUN bash docker/setup.sh bake && useradd --create-home --uid 1000 worker && chown -R worker /models /app
USER worker

EXPOSE 8765 8000
CMD ["python", "-u", "rp_handler.py"]
