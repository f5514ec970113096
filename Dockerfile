# Parallax notary image.
#
#   docker build -t parallax-notary:local .
#   docker run -e PARALLAX_NAME=eu-west -e PARALLAX_REGION=eu-west \
#              -e PARALLAX_URL=https://eu-west.notary.example.org \
#              -p 127.0.0.1:8443:8443 -v parallax-data:/data parallax-notary:local
#
# The entrypoint is `parallax serve` and nothing else: the tiny `sh -c` only
# maps PARALLAX_* environment variables to flags and then execs, so parallax
# is PID 1 and gets SIGTERM.  Extra arguments (docker run ... IMAGE ARGS, or
# compose `command:`) are appended as further `parallax serve` flags, e.g.
# `--allow-port any` or `--watch example.org`.  With `docker run --read-only`,
# mount /bundle as well as /data (the entry is written to /bundle/entries).
# tests/test_deploy_static.py runs this exact command line outside a container;
# tests/test_containers.py builds and runs the image for real.
#
# Dependencies are installed from deploy/constraints.txt: the exact versions CI
# tested.  The base is either the registry's python:3.11-slim or (in CI, where no
# registry is reachable) a Debian bookworm rootfs imported under that tag by
# .ci/install-container-engine.sh; only `python3` and `python3 -m pip` are used,
# which both provide.
# PARALLAX_REGION has no default: `serve` refuses to start without a region.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY notary ./notary
COPY client ./client
COPY deploy/constraints.txt ./constraints.txt
RUN python3 -m pip install --no-cache-dir -c constraints.txt /src \
    && rm -rf /src \
    && groupadd --system --gid 10001 parallax \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin parallax \
    && install -d -m 0700 -o 10001 -g 10001 /data \
    && install -d -m 0755 -o 10001 -g 10001 /bundle /bundle/entries

WORKDIR /data
USER 10001:10001

ENV PARALLAX_NAME=notary \
    PARALLAX_REGION= \
    PARALLAX_URL= \
    PARALLAX_LOG=INFO

EXPOSE 8443
VOLUME ["/data"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8443/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["/bin/sh", "-c", "exec parallax serve --init --data-dir /data --listen 0.0.0.0:8443 --name \"$PARALLAX_NAME\" --region \"$PARALLAX_REGION\" ${PARALLAX_URL:+--url \"$PARALLAX_URL\"} --export-entry \"/bundle/entries/$PARALLAX_NAME.json\" \"$@\"", "parallax"]
CMD []
