# fusefs as a container image: the `fusefs` command is the entrypoint; run as a sidecar with
# `mount --foreground` (README "Run as a sidecar").
#
#   docker build -t fusefs .                                  # from debian:bookworm-slim
#   docker build -t fusefs --build-arg BASE=my/debian:12 .    # any Debian/Ubuntu base with apt
#
# Offline or behind a TLS-rewriting proxy: build the wheels on the host and let the image take
# them from the build context instead of the package index (no CA is baked into the image):
#
#   pip wheel -w wheels .
#   docker build -t fusefs --build-arg PIP_ARGS="--no-index --find-links /src/wheels" .
#
# Two stages: the first builds pyfuse3 against libfuse3-dev in a virtualenv (when no wheel is
# at hand); the second has only the runtime libraries (python3, fuse3 with libfuse3,
# libisal2 for fast erasure coding) and the virtualenv.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
ARG PIP_ARGS=""
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc pkg-config libfuse3-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv /opt/fusefs \
    && PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/fusefs/bin/pip install --no-cache-dir ${PIP_ARGS} /src \
    && /opt/fusefs/bin/python -c "import pyfuse3, fusefs.cli" \
    && /opt/fusefs/bin/python -m pip uninstall -q -y pip setuptools

FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 fuse3 libisal2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/fusefs /opt/fusefs
ENV PATH=/opt/fusefs/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["fusefs"]
CMD ["--help"]
