# One image for every Conclave service; compose.yaml picks the command. Build args:
#   BASE_IMAGE   the Python base (python:3.11-slim by default)
#   TORCH_SPEC   the torch requirement (default: the pinned CPU-capable release)
#   TORCH_INDEX  an extra index for torch wheels, e.g. https://download.pytorch.org/whl/cu124 for CUDA,
#                or https://download.pytorch.org/whl/cpu for a small CPU-only image
#   PIP_FIND_LINKS  extra places pip looks for wheels (pip reads it from the environment), e.g. a local folder of
#                   wheels served on 127.0.0.1 to a build with host networking
#   CXX          1 (default): install g++, with which each service compiles the model's one-row decode step once on
#                the CPU it runs on (COMPILE=auto: about 50 s at the first start, cached in the data volume; see
#                the README's "Quantized weights" for the speed it gains); 0: a smaller image, eager decode step
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG CXX=1
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=
ARG PIP_FIND_LINKS=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    DATA_DIR=/data \
    CACHE_DIR=/data/models \
    HF_HOME=/data/hf

# A compiler, not a compiled step: what AOTInductor builds is specific to the CPU it is built on, and an image runs
# on other CPUs than the one that built it.
RUN if [ "$CXX" = 1 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*; fi
RUN useradd --create-home --uid 1000 conclave && mkdir -p /data && chown conclave /data
WORKDIR /app

# Dependencies first, in their own layers, so code changes do not reinstall torch.
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "$TORCH_SPEC" \
 && pip install -r requirements.txt \
 && pip install --no-deps -r requirements-nodeps.txt

COPY common ./common
COPY agents ./agents
COPY orchestrator ./orchestrator

USER conclave
VOLUME /data
EXPOSE 5000 5001 5002
HEALTHCHECK --interval=10s --timeout=6s --start-period=180s --retries=30 CMD ["python", "-m", "common.healthcheck"]
CMD ["python", "-m", "orchestrator"]
