# kvgate: the product only (`kvgate serve`, `kvgate epp`): no simulator, benchmark or test extras.
#   docker build -t kvgate:0.1.0 .
#   docker run --rm kvgate:0.1.0 epp --help
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kvgate
COPY pyproject.toml README.md /src/
COPY src /src/src
# A plain install: the pinned product dependencies of pyproject.toml, no extras.
RUN /opt/kvgate/bin/pip install /src

FROM python:3.11-slim
COPY --from=build /opt/kvgate /opt/kvgate
RUN groupadd --gid 10001 kvgate && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin kvgate
ENV PATH=/opt/kvgate/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
# ext_proc, gRPC health, metrics (+ /readyz, /v1/pool/aggregate): the reference EPP's ports.
EXPOSE 9002 9003 9090
ENTRYPOINT ["kvgate"]
CMD ["epp", "--help"]
