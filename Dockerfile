# Generator service and trainer image: Python 3.11 + the pinned project.
#   docker build -t negclip .            (BASE_IMAGE can be overridden with --build-arg)
# torch==2.14.1 from PyPI is the CUDA 13 build and brings its own CUDA libraries (nvidia-* wheels,
# pinned in constraints.txt); on a GPU host the NVIDIA container toolkit supplies the driver, so
# the conventional public base is enough (no CUDA base image, no PPA). scripts/check_docker.sh
# builds and runs it on a machine that cannot pull (a Debian base made with debootstrap).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first (cached layer): exactly the lock the Makefile installs.
COPY requirements.txt constraints.txt ./
RUN pip install --upgrade pip \
 && pip install -r requirements.txt -c constraints.txt

# Then the project (packages, committed embedded weights, configs), without re-resolving deps.
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY generator ./generator
COPY api ./api
COPY finetune ./finetune
COPY configs ./configs
COPY scripts/train_then_serve.sh ./scripts/
RUN pip install --no-deps .

# Service defaults for a container; docker-compose.yml overrides per service.
ENV NEG_API_HOST=0.0.0.0 \
    NEG_API_PORT=8000 \
    NEG_API_STORE_DIR=/data/store \
    NEG_API_DEVICE=cuda
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=30 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["python", "-m", "api"]
