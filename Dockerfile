# daxfs image: the host server and the guests run from the same image.
#
# BASE_IMAGE defaults to an official slim Python image. On a machine with no
# container registry, build a base with docker/build-base.sh (debootstrap +
# docker import) and pass --build-arg BASE_IMAGE=daxfs-base:bookworm.
#
# Python packages come from wheels built on the host beforehand
# (`make wheels` puts them in build/wheels), so the build needs no network.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# fuse3 for the guests' mounts, libpmem1 for the pmem flush path. A base that
# already has them (the debootstrap one) skips apt, which needs the network.
RUN if ! command -v fusermount3 >/dev/null || ! ldconfig -p | grep -q libpmem.so.1; then \
        apt-get update && apt-get install -y --no-install-recommends fuse3 libpmem1 \
        && rm -rf /var/lib/apt/lists/*; \
    fi

COPY build/wheels /wheels
RUN python3 -m venv /opt/daxfs \
    && /opt/daxfs/bin/pip install --no-index --find-links /wheels --no-cache-dir daxfs \
    && rm -rf /wheels
ENV PATH=/opt/daxfs/bin:$PATH PYTHONUNBUFFERED=1
COPY docker/guest_demo.py /opt/daxfs/guest_demo.py
CMD ["daxfs", "--help"]
