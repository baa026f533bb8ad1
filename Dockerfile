# Minimal image: `fusefs` as the entrypoint. Mounting inside a container needs the FUSE device
# and the right to mount:
#   docker build -t fusefs .
#   docker run --rm -it --device /dev/fuse --cap-add SYS_ADMIN -v /srv/fusefs:/srv/fusefs \
#       fusefs mount /srv/fusefs/vol /mnt --foreground --key-file /srv/fusefs/vol.key
FROM python:3.11-slim-bookworm

# fuse3: fusermount3 for mounting; libfuse3-dev, pkg-config, gcc: pyfuse3 builds from source;
# libisal2: ISA-L computes the erasure code ~15x faster than zfec alone.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 libfuse3-dev pkg-config gcc libisal2 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY fusefs ./fusefs
RUN pip install --no-cache-dir . && rm -rf /src

WORKDIR /
ENTRYPOINT ["fusefs"]
CMD ["--help"]
