# Higgs Audio V2 TTS: the RunPod serverless worker (default) or the HTTP server (MODE=http).
#
#   docker build -t higgs-tts .
#   docker run --gpus all -v /path/to/volume:/runpod-volume higgs-tts                # worker
#   docker run --gpus all -e MODE=http -p 8000:8000 -v ...:/runpod-volume higgs-tts  # HTTP server
#   docker run --gpus all -p 10200:10200 -v ...:/runpod-volume higgs-tts wyoming     # Home Assistant
#
# The model, the codec and the voices are not in the image: they live on the network volume
# (scripts/setup-network-volume.sh lays them out where the defaults look), or the model is one of
# RunPod's cached models (docs/deploy-cached-models.md). With MODEL_PATH and TOKENIZER_PATH unset,
# each Hugging Face repo is looked for in /runpod-volume/models/NAME, then RunPod's cache
# /runpod-volume/huggingface-cache/hub, then the HF cache (HF_HOME below), then downloaded. About 4.5 GB
# uncompressed: torch's CUDA 13 wheels are most of it; docker/prune-site-packages.sh removes what
# the worker never loads and docker/check-libs.sh proves that every library left still resolves.
#
# Without arguments outside RunPod, the worker runs test_input.json once and exits (the SDK's local
# test mode). BASE_IMAGE must be a Debian-based Python 3.11 image (the venv's interpreter comes from
# it); it needs no CUDA toolkit: the CUDA 13.0 libraries come with torch's wheels, the driver from
# the host's NVIDIA container runtime, and it must be r580 or newer (on RunPod, the endpoint's
# minimum CUDA version 13.0); TORCH_INDEX_URL below builds for older drivers instead.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

# pip pinned too (the base image's may be old enough to fall back to `setup.py install`).
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir pip==26.3
WORKDIR /src

# Pinned runtime dependencies first: this layer is rebuilt only when they change. Every one is a
# wheel or a pure-Python sdist (jieba, langid), so the builder needs no compiler either.
# TORCH_INDEX_URL (empty: PyPI's torch, CUDA 13.0, driver r580+) takes torch and torchaudio, same
# versions, from another wheel index instead, e.g. https://download.pytorch.org/whl/cu128 for
# CUDA 12.8 hosts (driver r570+); see docker/install-requirements.sh.
ARG TORCH_INDEX_URL=""
COPY requirements.runpod docker/install-requirements.sh ./
RUN bash install-requirements.sh requirements.runpod "${TORCH_INDEX_URL}"

COPY pyproject.toml README.md ./
COPY higgs_tts ./higgs_tts
RUN pip install --no-cache-dir --no-deps .

# Image sizes (bytes, uncompressed, measured on a 156 MB bookworm base): 4.48e9 by default.
# KEEP_TRITON=1 keeps triton for torch.compile (which would also need a C compiler in the image):
# 5.15e9, over the 5 GB budget, unless with PRUNE_PYCACHE=1 (4.92e9), which drops the byte-code
# caches (-0.23 GB, but ~3.5 s more per cold start: the worker's user cannot write them back).
ARG KEEP_TRITON=0
ARG PRUNE_PYCACHE=0
COPY docker/prune-site-packages.sh docker/check-libs.sh ./docker/
RUN KEEP_TRITON="${KEEP_TRITON}" PRUNE_PYCACHE="${PRUNE_PYCACHE}" \
        bash docker/prune-site-packages.sh /opt/venv/lib/python3.11/site-packages \
    && bash docker/check-libs.sh /opt/venv/lib/python3.11/site-packages

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="higgs-tts" \
      org.opencontainers.image.description="Higgs Audio V2 text-to-speech: RunPod serverless worker and HTTP server" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0"

# No apt packages: the system libraries that the venv's binaries need (libc6, libstdc++6,
# libgcc-s1, and zlib1g for cuDNN) are in the base image, which check-libs.sh verified in the
# builder stage, on the same base. libsndfile is bundled in the soundfile wheel
# (_soundfile_data/libsndfile_x86_64.so), FFmpeg in the av wheel (av.libs/), libgomp in torch/lib;
# libcuda.so.1 is mounted by the NVIDIA container runtime.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RUNPOD_LOG_LEVEL=INFO \
    VOICE_PROMPTS_PATH=/runpod-volume/voice_prompts \
    VOICE_CACHE_DIR=/runpod-volume/cache/voice_codes \
    HF_HOME=/runpod-volume/hf-cache

COPY --from=builder /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/higgs-entrypoint
COPY docker/check-libs.sh /usr/local/bin/higgs-check-libs
WORKDIR /app
COPY handler.py test_input.json ./
COPY higgs_tts ./higgs_tts
# For a pod on this image with the network volume attached: ./scripts/setup-network-volume.sh
COPY scripts/setup-network-volume.sh ./scripts/

# The worker runs as an unprivileged user (uid 1000), which RunPod serverless allows. The network
# volume is mounted at /runpod-volume, usually owned by root: the models and voices need only be
# readable, but add_voice (voice_prompts/) and the voice-code cache (cache/) need them writable by
# uid 1000 (a read-only cache only costs speed). Give them to it once from a pod, e.g.
# `chown -R 1000:1000 /runpod-volume/voice_prompts /runpod-volume/cache`, or run the container as
# root (docker run --user root) where that is not possible. Without a volume, the image's own
# /runpod-volume (the user's) takes HF_HOME's downloads and the voice cache.
RUN python -m compileall -q /app \
    && useradd --uid 1000 --user-group --create-home --shell /bin/bash higgs \
    && mkdir -p /runpod-volume \
    && chown higgs:higgs /runpod-volume
# higgs:higgs, numerically, so that runtimes that check for a non-root user can tell.
USER 1000:1000

EXPOSE 8000 10200
ENTRYPOINT ["/bin/sh", "/usr/local/bin/higgs-entrypoint"]
CMD ["worker"]
