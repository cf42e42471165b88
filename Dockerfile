# The aedr worker image. CPU by default:
#   docker build -t aedr .
# CUDA variant: the torch wheels on PyPI for Linux x86_64 are CUDA builds, so pass an empty
# TORCH_INDEX_URL and run with `--gpus all` (see docs/OPERATIONS.md):
#   docker build --build-arg TORCH_INDEX_URL= -t aedr:cuda .
# TORCH_INDEX_URL: your PyTorch CPU wheel index (an extra pip index); empty = PyPI only.
# The base is pinned to Debian 12 (bookworm): the runtime stage installs the shared libraries
# OpenCV needs under their bookworm names. Not built on the project's machines (no Docker
# engine there); `import cv2` needing exactly these was checked with ldd on a Debian 12 host.
FROM python:3.11-slim-bookworm AS build
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY migrations ./migrations
RUN python -m venv /opt/aedr \
 && if [ -n "$TORCH_INDEX_URL" ]; then /opt/aedr/bin/pip install --extra-index-url "$TORCH_INDEX_URL" torch==2.13.0; fi \
 && /opt/aedr/bin/pip install /src

FROM python:3.11-slim-bookworm
# opencv-python (pulled in by invisible-watermark, the SD/SDXL watermark decoder of the provenance
# signals) links libGL, libX11/libxcb and GLib's libgthread; slim images have none of them.
# Without them the worker refuses to start ("provenance: kind 'watermark' needs ..."), unless
# provenance.kinds leaves the watermark out.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home /app aedr
COPY --from=build /opt/aedr /opt/aedr
COPY migrations /app/migrations
ENV PATH=/opt/aedr/bin:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 AEDR_MIGRATIONS_DIR=/app/migrations
WORKDIR /app
USER aedr
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["aedr"]
CMD ["serve", "--config", "/etc/aedr/worker.toml"]
