"""``kvgate serve --clusters``: ``GET /v1/responses/{id}`` and ``POST /v1/responses/{id}/cancel`` sent where
the response was made (vLLM keeps it in the memory of the server that made it: ``openai.responses``).

The global gateway remembers the cluster (and, in Endpoint mode, the pod) that answered each Responses id
(``GlobalGateway.responses``). A lookup goes to that pod (Endpoint mode), else to that cluster's gateway
(Parent mode: a ``kvgate serve`` there sends it on to its endpoint the same way); after a connection error
at the pod, to that cluster's gateway when it has one. An unknown id (or a home no longer in the clusters)
goes to the first cluster, in the clusters file's order, that has a gateway (its gateway sends it to an
endpoint, whose server answers its own 404 for an id it does not hold). With Endpoint-mode clusters only
there is nowhere to send it: an EPP picks a pod from a request's body, and a lookup has none; the global
gateway answers 404 ``response_not_found`` itself. A lookup generates nothing: no cluster pick, no EPP,
no cluster accounting or token metrics, no back-off; its answer is relayed as it comes.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import aiohttp

from kvgate.httpfront.server import Request, Response, StreamResponse, json_error
from kvgate.openai.responses import lookup_target

if TYPE_CHECKING:
    from kvgate.multicluster.serve import GlobalGateway

log = logging.getLogger("kvgate.multicluster")

_DROP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"}
)
CONNECT_TIMEOUT_S = 5.0


def targets(gw: GlobalGateway, response_id: str) -> list[tuple[str, str]]:
    """``(cluster, address)`` to try in turn for a lookup of ``response_id`` (see the module's doc)."""
    router = gw.router
    home = gw.responses.home(response_id)
    st = None if home is None else router.states.get(home[0])
    out: list[tuple[str, str]] = []
    if st is not None and home is not None:
        if home[1] is not None:
            out.append((st.name, home[1]))
        if st.spec.gateway is not None:
            out.append((st.name, st.spec.gateway))
        if out:
            return out
    for other in router.state_list():
        if other.spec.gateway is not None:
            return [(other.name, other.spec.gateway)]
    return out


async def lookup(gw: GlobalGateway, request: Request) -> Response | StreamResponse:
    got = lookup_target(request.method, request.path)
    if len(got) == 3:
        status, why, allow = got
        return json_error(status, why, headers={"Allow": allow} if allow else None)
    response_id, method = got
    where = targets(gw, response_id)
    if not where:
        return json_error(
            404,
            f"Response with id '{response_id}' is not known to this gateway, and no cluster has a gateway "
            "to ask (an EPP cannot pick a pod for a request without a body)",
            code="response_not_found",
        )
    session = gw.router._session
    assert session is not None, "start() first"
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    suffix = request.path + (f"?{request.query}" if request.query else "")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=300)
    last = ""
    gw.inflight += 1
    gw._idle.clear()
    try:
        for cluster, address in where:
            try:
                resp = await session.request(
                    method, f"http://{address}{suffix}", headers=headers, timeout=timeout
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                last = f"cluster {cluster}: {type(e).__name__}"
                continue
            try:
                return await _relay(request, resp, cluster)
            finally:
                resp.release()
        return json_error(502, f"lookup failed: {last}", code="upstream_unavailable")
    finally:
        gw.inflight -= 1
        if not gw.inflight:
            gw._idle.set()


async def _relay(request: Request, resp: aiohttp.ClientResponse, cluster: str) -> StreamResponse:
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP}
    headers["x-kvgate-cluster"] = cluster
    length = None
    with contextlib.suppress(KeyError, ValueError):
        length = int(resp.headers["Content-Length"])
    out = StreamResponse(status=resp.status, headers=headers, length=length)
    await out.prepare(request)
    try:
        async for chunk in resp.content.iter_any():
            await out.write(chunk)
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        if isinstance(e, ConnectionResetError):
            raise  # (the client went away)
        log.warning("lookup answer from cluster %s cut: %s: %s", cluster, type(e).__name__, e)
        out.abort()  # the client must see an incomplete body, not a short one
        return out
    await out.write_eof()
    return out
