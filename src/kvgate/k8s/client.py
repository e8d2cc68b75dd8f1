"""Talking to an API server: kubernetes-asyncio loads the configuration (in-cluster service account,
kubeconfig, or a bare ``--kube-server`` URL) and signs requests (bearer tokens, client certificates,
exec plugins, token refresh); kvgate keeps the raw responses, so a watch is read as the stream it is
and any group/version/plural (CRDs included) goes through the same two calls."""

from __future__ import annotations

import logging
import os
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig

log = logging.getLogger(__name__)


class KubeError(Exception):
    """A non-2xx answer: ``status`` (403 = RBAC, 404, 409 = conflict, 410 = gone) and the Status message."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status, self.message, self.reason = status, message, reason


async def load_configuration(
    server: str | None = None, kubeconfig: str | None = None
) -> kclient.Configuration:
    """``--kubeconfig`` / ``$KUBECONFIG``, else the in-cluster service account, else ``~/.kube/config``;
    ``--kube-server`` alone is an unauthenticated URL (or overrides the kubeconfig's server)."""
    cfg = kclient.Configuration()
    if kubeconfig or os.environ.get("KUBECONFIG"):
        await kconfig.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    elif server is None:
        try:
            kconfig.load_incluster_config(client_configuration=cfg)
        except kconfig.ConfigException:
            await kconfig.load_kube_config(client_configuration=cfg)
    if server is not None:
        cfg.host = server.rstrip("/")
    return cfg


class KubeClient:
    def __init__(self, configuration: kclient.Configuration) -> None:
        self.configuration = configuration
        self.api = kclient.ApiClient(configuration)

    @classmethod
    async def connect(cls, server: str | None = None, kubeconfig: str | None = None) -> KubeClient:
        return cls(await load_configuration(server, kubeconfig))

    @property
    def host(self) -> str:
        return str(self.configuration.host)

    async def close(self) -> None:
        await self.api.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout_s: aiohttp.ClientTimeout | float | None = None,
    ) -> aiohttp.ClientResponse:
        """The raw response (the caller reads or streams it and must release it)."""
        params = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()]
        resp: aiohttp.ClientResponse = await self.api.call_api(
            path, method, query_params=params,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body, auth_settings=["BearerToken"], _preload_content=False,
            _request_timeout=timeout_s,
        )  # fmt: skip
        return resp

    async def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
    ) -> dict[str, Any]:
        """One JSON request; a non-2xx answer raises ``KubeError`` with the server's Status message."""
        resp = await self.open(method, path, query, body, content_type, timeout_s)
        async with resp:
            raw = await resp.read()
            if not 200 <= resp.status < 300:
                raise error_from(resp.status, raw)
        out: dict[str, Any] = orjson.loads(raw) if raw else {}
        return out


def error_from(status: int, raw: bytes) -> KubeError:
    try:
        st = orjson.loads(raw)
        return KubeError(status, str(st.get("message", "")), str(st.get("reason", "")))
    except (orjson.JSONDecodeError, AttributeError):
        return KubeError(status, raw[:200].decode("utf-8", "replace"))
