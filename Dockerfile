# Parakeet ASR worker for RunPod serverless (batch jobs + WebSocket streaming on one engine).
# Build:  docker build -t parakeet-worker .            (bakes nvidia/parakeet-tdt-0.6b-v3 into the image)
#         docker build --build-arg PARAKEET_MODEL=/app/models/my.nemo -t parakeet-worker .
# Run:    docker run --gpus all -p 8765:8765 -p 8000:8000 parakeet-worker
#
# CUDA: torch 2.13.0 from PyPI is a CUDA 13 build that brings its own CUDA libraries (cuBLAS,
# cuDNN, NCCL ... as nvidia-* wheels), so the base only needs the driver hook-up: the CUDA "base"
# flavour (no cuDNN/cuBLAS copies that torch would shadow). Its NVIDIA_REQUIRE_CUDA=cuda>=13.0
# makes the container runtime refuse a host whose driver is too old (< 580), and .runpod/hub.json
# only asks RunPod for hosts with CUDA 13.x. The python step fails the build if torch's CUDA major
# differs from CUDA_VERSION. For CUDA 12.8 hosts: --build-arg CUDA_VERSION=12.8.1 --build-arg
# TORCH_INDEX=<PyTorch's cu128 wheel index> and allowedCudaVersions 12.8/12.9 in hub.json.
ARG CUDA_VERSION=13.0.0
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu24.04

ARG PARAKEET_MODEL=nvidia/parakeet-tdt-0.6b-v3
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=""
ENV PARAKEET_MODEL=${PARAKEET_MODEL} \
    HF_HOME=/models/hf \
    PARAKEET_MODEL_CACHE=/models/extracted \
    DEVICE=cuda \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHON=/opt/venv/bin/python

WORKDIR /app
COPY docker/setup.sh docker/setup.sh
RUN bash docker/setup.sh system && bash docker/setup.sh user && python3 -m venv /opt/venv
COPY requirements.txt .
RUN TORCH_SPEC="${TORCH_SPEC}" TORCH_INDEX="${TORCH_INDEX}" bash docker/setup.sh python
COPY . .
# The model is fetched and unpacked at build time (on the build machine's CPU): a cold start
# downloads and unpacks nothing. chown in the same layer, so the model is stored once.
RUN bash docker/setup.sh bake && chown -R worker /models /app
USER worker

EXPOSE 8765 8000
CMD ["python", "-u", "rp_handler.py"]
