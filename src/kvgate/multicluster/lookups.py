"""``kvgate serve --clusters``: ``GET /v1/responses/{id}`` and ``POST /v1/responses/{id}/cancel`` sent where
the response was made (vLLM keeps it in the memory of the server that made it: ``openai.responses``).

The global gateway remembers the cluster (and, in Endpoint mode, the pod) that answered each Responses id
(``GlobalGateway.responses``). A lookup goes to that pod (Endpoint mode), else to that cluster's gateway
(Parent mode: a ``kvgate serve`` there sends it on to its endpoint the same way); after a connection error at
the pod (or no answer), to that cluster's gateway when it has one. An unknown id (or a home no longer in the
clusters) goes to the first cluster, in the clusters file's order, that has a gateway and is available (not
found hung, not backing off; else the first with a gateway), whose gateway sends it to an endpoint, whose
server answers its own 404 for an id it does not hold. Each try is bounded as a request is
(``GlobalRouter._post``, review s19-qa2 M1): a stream's head (``?stream=true``) by the clusters file's
``head_timeout_s``; past it a plain answer's by a probe of the gateway (or pod), none = hung (504, the next
address); before, each waited the 300 s read timeout. An id whose home cluster is found hung
(``ClusterState.hung_at``, no aggregate since) is answered 504 at once: it cannot be answered elsewhere. With
Endpoint-mode clusters only there is nowhere to send it: an EPP picks a pod from a request's body, and a
lookup has none; the global gateway answers 404 ``response_not_found`` itself.
``limits.requestTimeoutSeconds`` bounds each head as it bounds a request's (504 ``request_timeout``). A
lookup generates nothing: no cluster pick, no EPP, no cluster accounting or token metrics,
no back-off (a gateway found hung is marked, as by a request); its answer is relayed as it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import aiohttp

from kvgate.httpfront.server import Request, Response, StreamResponse, json_error
from kvgate.multicluster.router import ENDPOINT, PARENT, Deadline, NoHead, PastDeadline
from kvgate.openai.responses import lookup_target

if TYPE_CHECKING:
    from kvgate.multicluster.serve import GlobalGateway
    from kvgate.multicluster.state import ClusterState

log = logging.getLogger("kvgate.multicluster")

_DROP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"}
)
CONNECT_TIMEOUT_S = 5.0


def targets(gw: GlobalGateway, response_id: str) -> list[tuple[ClusterState, str, str]]:
    """``(cluster, address, mode)`` to try in turn for a lookup of ``response_id`` (see the module's doc)."""
    router = gw.router
    home = gw.responses.home(response_id)
    st = None if home is None else router.states.get(home[0])
    out: list[tuple[ClusterState, str, str]] = []
    if st is not None and home is not None:
        if home[1] is not None:
            out.append((st, home[1], ENDPOINT))
        if st.spec.gateway is not None:
            out.append((st, st.spec.gateway, PARENT))
        if out:
            return out
    now = router.clock()
    gateways = [s for s in router.state_list() if s.spec.gateway is not None]
    first = next((s for s in gateways if s.available(now)), gateways[0] if gateways else None)
    if first is not None and first.spec.gateway is not None:
        return [(first, first.spec.gateway, PARENT)]
    return out


def _hung_home(gw: GlobalGateway, response_id: str) -> str | None:
    """The home cluster of ``response_id`` when it is found hung and no aggregate came since."""
    home = gw.responses.home(response_id)
    st = None if home is None else gw.router.states.get(home[0])
    if st is not None and st.hung_at is not None and st.hung_at == st.fetched_at:
        return st.name
    return None


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
    hung = _hung_home(gw, response_id)
    if hung is not None:
        return json_error(
            504,
            f"lookup failed: the response's cluster {hung} is hung (no response head, no aggregate)",
            code="upstream_timeout",
        )
    router = gw.router
    # The request's bound (``limits.requestTimeoutSeconds``) holds for a lookup's head too: past it, 504.
    deadline = Deadline.after(asyncio.get_running_loop().time(), router.cfg.request_timeout_s)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    suffix = request.path + (f"?{request.query}" if request.query else "")
    stream = parse_qs(request.query).get("stream", [""])[-1].lower() == "true"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=300)
    last = ""
    status = 502
    gw.inflight += 1
    gw._idle.clear()
    try:
        for st, address, mode in where:
            try:
                # Bounded as a request is (``GlobalRouter._post``): a stream's head by head_timeout_s, past
                # it a plain answer's by a probe of the gateway; a cluster found hung is left.
                resp = await router._post(
                    st, mode, f"http://{address}{suffix}", None, headers, timeout, stream, method, deadline
                )
            except PastDeadline as e:
                assert deadline is not None
                why = deadline.message(f"cluster {st.name}: {e.outcome}")
                return json_error(504, f"lookup failed: {why}", code="request_timeout")
            except NoHead as e:
                last = f"cluster {st.name}: {e.outcome}"
                status = 504
                continue
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                last = f"cluster {st.name}: {type(e).__name__}"
                continue
            try:
                return await _relay(request, resp, st.name)
            finally:
                resp.release()
        code = "upstream_timeout" if status == 504 else "upstream_unavailable"
        return json_error(status, f"lookup failed: {last}", code=code)
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
