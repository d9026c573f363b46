# The dermagan serving image: FastAPI + ONNX Runtime over the shipped models/ (no torch).
#
#   docker build -t dermagan:gpu .                                  # onnxruntime-gpu + CUDA/cuDNN wheels
#   docker build -t dermagan:cpu --build-arg ORT_EXTRA=serve .      # CPU onnxruntime only
#
# BASE_IMAGE: any Debian-like image. A Python 3.11+ image is used as is; a plain Debian base (no
# Python) gets Debian's python3 from apt. The CUDA libraries come from pip (onnxruntime-gpu[cuda,cudnn]),
# so no CUDA base image is needed; the host's driver is mounted by the NVIDIA Container Toolkit.
# Behind a TLS-intercepting proxy, hand pip the proxy's CA as a BuildKit secret (used only when given):
#   DOCKER_BUILDKIT=1 docker build --secret id=hostca,src=/etc/ssl/certs/ca-certificates.crt .
# See docs/docker.md.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- python: the base image plus a Python 3 (from apt only where the base has none) -------------
FROM ${BASE_IMAGE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/sh", "-eu", "-c"]
# Unpinned on purpose: the versions are whatever the chosen base's Debian release ships.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'

# ---- deps: a virtual environment with dermagan's dependencies for the chosen extra ---------------
FROM python AS deps
# serve-gpu: onnxruntime-gpu with its CUDA + cuDNN wheels; serve: the CPU onnxruntime.
ARG ORT_EXTRA=serve-gpu
# Debian's python3 has no venv module until python3-venv is installed (python images have it).
# hadolint ignore=DL3008
RUN if ! python3 -m venv /opt/venv >/dev/null 2>&1; then \
        rm -rf /opt/venv; \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
        python3 -m venv /opt/venv; \
    fi
WORKDIR /src
# The dependencies only (from pyproject.toml), so that a change to dermagan's code leaves this
# layer -- hundreds of MB, GBs with CUDA -- cached. The secret `hostca` is the CA bundle pip should
# trust (a proxy's); without it pip uses its own.
COPY pyproject.toml deploy/requirements.py ./
RUN --mount=type=secret,id=hostca \
    case "${ORT_EXTRA}" in serve|serve-gpu) ;; \
        *) echo "ORT_EXTRA must be serve (CPU) or serve-gpu (CUDA), got '${ORT_EXTRA}'" >&2; exit 1;; esac; \
    if [ -s /run/secrets/hostca ]; then export PIP_CERT=/run/secrets/hostca; fi; \
    python3 requirements.py pyproject.toml "${ORT_EXTRA}" > requirements.txt; \
    /opt/venv/bin/pip install --no-cache-dir -r requirements.txt; \
    /opt/venv/bin/pip uninstall -q -y setuptools 2>/dev/null || true

# ---- wheel: dermagan itself ------------------------------------------------------------------------
FROM deps AS wheel
COPY README.md ./
COPY dermagan/ dermagan/
COPY service/ service/
COPY training/ training/
RUN --mount=type=secret,id=hostca \
    if [ -s /run/secrets/hostca ]; then export PIP_CERT=/run/secrets/hostca; fi; \
    /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime: the venv, the shipped models, a non-root user -------------------------------------
FROM python AS runtime
ARG ORT_EXTRA=serve-gpu
LABEL org.opencontainers.image.title="dermagan" \
      org.opencontainers.image.description="GANs for dermatologic images: ONNX Runtime inference service" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dermagan.ort-extra="${ORT_EXTRA}"
COPY --from=deps /opt/venv /opt/venv
# Register the CUDA/cuDNN libraries of the nvidia-* wheels with the dynamic loader, so the CUDA
# provider finds them without LD_LIBRARY_PATH (the list is empty for the CPU variant).
RUN find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' > /etc/ld.so.conf.d/dermagan-nvidia.conf; \
    ldconfig; \
    useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin dermagan
# dermagan itself: a small layer of its own on top of the dependencies' (no network needed).
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /wheels/*.whl; \
    /opt/venv/bin/pip check; \
    if /opt/venv/bin/python -c 'import torch' 2>/dev/null; then echo 'torch must not be in the serving image' >&2; exit 1; fi
COPY models/ /opt/dermagan/models/
# ONNX Runtime >= 1.31 wheels carry telemetry (a device-id file + uploads to Microsoft) on Linux;
# a medical-imaging service sends nothing anywhere: opt out (the name the wheels read, and its
# announced successor).
ENV PATH=/opt/venv/bin:${PATH} \
    ORT_DISABLE_TELEMETRY=1 \
    ORT_TELEMETRY_DISABLED=1 \
    DERMAGAN_MODELS_DIR=/opt/dermagan/models \
    DERMAGAN_HOST=0.0.0.0 \
    DERMAGAN_PORT=8000
WORKDIR /opt/dermagan
USER 10001:10001
EXPOSE 8000
# Ready = every model loaded and warmed: `dermagan probe` asks /readyz (https when DERMAGAN_TLS_CERTFILE is set;
# the standard library's http.client, so the image needs no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["/opt/venv/bin/dermagan", "probe"]
# Exec form: the server is PID 1 and receives SIGTERM itself (it drains accepted work, then exits).
ENTRYPOINT ["/opt/venv/bin/dermagan", "serve"]
CMD []
