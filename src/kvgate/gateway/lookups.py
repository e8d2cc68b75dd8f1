"""``GET /v1/responses/{id}`` and ``POST /v1/responses/{id}/cancel``: sent to the endpoint that holds the
response.

vLLM keeps a stored Responses object in the memory of the server that made it (``openai.responses``), and
serves its retrieval (``GET``, ``?stream=true&starting_after=N`` an event stream) and the cancel of a
background one (``POST .../cancel``) there only; it has no ``DELETE``. The proxy remembers which endpoint
answered each id (``Proxy.responses``); a lookup goes there while it is in the pool and healthy (in the pool
but not ready: 503 with ``Retry-After``, nowhere else holds it). An id the proxy does not know (a restart,
an id past its tables' bounds) is asked of the ready endpoints (``gateway.locate``, as a follow-up's:
prev26) and sent where it is kept; found nowhere, to the healthy endpoint with the fewest requests in
flight (vLLM answers its own 404, then true); some could not answer: 503 with ``Retry-After``. A lookup
generates nothing: it is not admitted through flow control, not picked by the pool's picker (whose hooks
would learn from a request that has no prompt, tokens or first token), not counted in the endpoints'
load or token metrics, charged no tokens, and not retried (one attempt: a connection error or a timeout is the
client's 502 / 504; at the id's home a connection error is a 503 with ``Retry-After``, as a follow-up's
there, and a server's 429/503 keeps its ``Retry-After``: a draining home, review s26-rev-prev26 F7). The same
front checks as a generation apply: a key (``auth``), the drain, the tenant's
``rateLimits`` (one request of its requestsPerMinute; a tenant out of tokens is refused, as for a generation:
review s19-fc L2), ``maxConcurrentRequests``; its answer (a JSON body, an event stream) is relayed as it
comes, with the client's model name put back for an id made through a model rewrite, as the create's answer
had it (review s19-qa2 L2). Any tenant's key may look up any id (as vLLM itself, which checks no owner: its
ids are random, ``resp_`` + 16 hex characters, 64 random bits of a uuid4; review s19-fc L3).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from kvgate.datalayer.endpoint import Endpoint
from kvgate.gateway.bigbody import PieceRewriter
from kvgate.gateway.errors import GatewayError, error_response, shutting_down, unauthorized
from kvgate.gateway.locate import RETRY_AFTER
from kvgate.gateway.stream import StreamRelay, pass_upstream_headers
from kvgate.gateway.upstream import DeadlinePassed, ReadTimeout
from kvgate.httpfront.server import Request, Response, StreamResponse
from kvgate.multicluster.epp_client import retry_after_s
from kvgate.openai.protocol import RETRY_AFTER_DEFAULT
from kvgate.openai.responses import lookup_target
from kvgate.requestid import acceptable as acceptable_rid

if TYPE_CHECKING:
    from kvgate.gateway.pools import Pool
    from kvgate.gateway.proxy import Proxy

log = logging.getLogger("kvgate.gateway")

# Client headers not passed on (beside hop-by-hop ones and the gateway's own x-gateway-/x-kvgate-);
# ``accept-encoding`` as the proxy drops it: the answer's body goes out as it came, with only its type.
_DROP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
     "proxy-connection", "proxy-authorization", "expect", "x-request-id", "accept-encoding"}
)  # fmt: skip
_ERRORS = (TimeoutError, OSError)  # (UpstreamError is an OSError)


class ResponseLookups:
    """The route's handler (``kvgate serve``'s front, prefix ``/v1/responses/``)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def __call__(self, request: Request) -> Response | StreamResponse:
        proxy = self.proxy
        rid = request.headers.get("x-request-id", "")
        if not acceptable_rid(rid):  # (empty, or bounded as ``Proxy._entry`` bounds it: qa24 F6)
            rid = proxy._request_id()
        # HEAD is the GET's answer without its body (RFC 9110 §9.3.2): asked upstream as a GET (vLLM's
        # routes take GET only), the front sends the head alone (``StreamResponse``).
        head = request.method == "HEAD"
        got = lookup_target("GET" if head else request.method, request.path)
        if isinstance(got, tuple) and isinstance(got[0], int):
            status, why, allow = got
            resp = error_response(GatewayError(status, why), rid)
            if allow:
                resp.headers["Allow"] = "GET, HEAD" if allow == "GET" else allow
            return resp
        response_id, method = got
        if proxy.draining:
            return shutting_down(rid)  # (503, Retry-After, Connection: close)
        tenant = None if proxy.keys is None else proxy.keys.tenant(request.headers)
        if proxy.keys is not None and tenant is None:
            proxy.metrics.error("", "", "401")
            return unauthorized(rid)
        if proxy.limiter is not None and (limited := proxy._rate_limited(request, tenant, rid)) is not None:
            return limited  # (a request of the tenant's requestsPerMinute, as any: review s19-fc L2)
        fleet = proxy.fleet_inflight
        limit = proxy.cfg.limits.max_concurrent_requests
        if proxy.inflight >= limit if fleet is None else not fleet.enter(limit):
            proxy.metrics.error("", "", "429")
            resp = error_response(
                GatewayError(429, "too many concurrent requests", code="too_many_requests"), rid
            )
            resp.headers["Retry-After"] = "1"
            return resp
        if not proxy.inflight:
            proxy.idle.clear()
        proxy.inflight += 1
        try:
            return await self._send(request, rid, response_id, method)
        except GatewayError as e:
            return error_response(e, rid)
        finally:
            if fleet is not None:
                fleet.leave()
            proxy.inflight -= 1
            if proxy.inflight == 0:
                proxy.idle.set()

    def endpoint(self, response_id: str) -> tuple[Pool, Endpoint] | str | None:
        """Where a lookup goes: the endpoint that made the response while it is in a pool and healthy; its
        address if it is in a pool but not ready; None if its home is not known (or in no pool)."""
        proxy = self.proxy
        home = proxy.responses.home(response_id)
        if home is None:
            return None
        for pool in proxy.pools:
            for ep in pool.endpoints():
                if ep.address == home:
                    return (pool, ep) if ep.healthy else home
        return None

    async def _where(self, request: Request, response_id: str) -> tuple[Pool, Endpoint]:
        """``endpoint``; a home not ready: 503; not known: asked (``gateway.locate``), else the healthy
        endpoint with the fewest requests in flight (first pool first on ties)."""
        proxy = self.proxy
        got = self.endpoint(response_id)
        if isinstance(got, tuple):
            return got
        if got is not None:
            raise GatewayError(
                503,
                f"{'an upstream endpoint' if proxy.hide else f'upstream {got}'}, which holds response"
                f" '{response_id}', is not ready: retry later",
                code="upstream_unavailable",
                retry_after=RETRY_AFTER,
            )
        ready = [(pool, ep) for pool in proxy.pools for ep in pool.endpoints() if ep.healthy]
        if not ready:
            raise GatewayError(503, "no ready endpoint", code="upstream_unavailable")
        asked = [(ep.address, proxy.tls.get(pool.name)) for pool, ep in ready]
        found = await proxy.locator.find(response_id, asked, proxy._client_key(request))
        if found.home is not None:
            proxy.responses.remember(response_id, found.home)
            # (the home as it stands now: a round shared with an earlier caller may name one that lost its
            # readiness since: the 503 of a known unready home; review s26-rev-prev26 F2)
            got = self.endpoint(response_id)
            if isinstance(got, tuple):
                return got
            raise GatewayError(
                503,
                f"{'an upstream endpoint' if proxy.hide else f'upstream {found.home}'}, which holds response"
                f" '{response_id}', is not ready: retry later",
                code="upstream_unavailable",
                retry_after=RETRY_AFTER,
            )
        if found.unanswered:  # (may be kept there, a key refused elsewhere or not: s26-rev-fixes26 F3)
            raise GatewayError(
                503,
                f"response '{response_id}' was not found, and {found.unanswered} of {found.asked} endpoints"
                " could not be asked (it may be kept there): retry later",
                code="upstream_unavailable",
                retry_after=RETRY_AFTER,
            )
        best = ready[0]
        for pe in ready:
            if pe[1].inflight.requests < best[1].inflight.requests:
                best = pe
        return best

    async def _send(
        self, request: Request, rid: str, response_id: str, method: str
    ) -> Response | StreamResponse:
        proxy = self.proxy
        pool, ep = await self._where(request, response_id)
        target = request.path + (f"?{request.query}" if request.query else "")
        lines = [f"{method} {target} HTTP/1.1\r\nhost: {ep.address}\r\n"]
        conn = request.headers.get("connection")
        hop = frozenset(t.strip().lower() for t in conn.split(",")) if conn else frozenset()
        for k, v in request.headers.items():
            lk = k.lower()
            if lk in _DROP or lk in hop or lk.startswith(("x-gateway-", "x-kvgate-")):
                continue
            if proxy.keys is not None and lk in ("authorization", "x-api-key"):
                continue  # the gateway's key is not the model server's
            lines.append(f"{lk}: {v}\r\n")
        lines.append(f"x-request-id: {rid}\r\ncontent-length: 0\r\n\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        loop_time = proxy._loop.time
        deadline = loop_time() + proxy.request_timeout if proxy.request_timeout else None
        try:
            resp = await proxy.upstream.request(ep.address, head, b"", deadline, proxy.tls.get(pool.name))
        except (ReadTimeout, DeadlinePassed):
            raise GatewayError(
                504, f"{proxy._upstream_name(ep)} timed out", code="upstream_timeout"
            ) from None
        except _ERRORS as e:
            why = f"{proxy._name(ep)}: {type(e).__name__}"
            if proxy.responses.home(response_id) == ep.address:
                # (its home, known or just found, refused or reset before any answer: down, draining or
                # restarting; nowhere else keeps it: a 503 to retry, as a follow-up's there, not a 502;
                # F7: its own 404 comes once it is back without it)
                raise GatewayError(
                    503,
                    f"lookup failed: {why}, which holds response '{response_id}', could not be reached:"
                    " retry later",
                    code="upstream_unavailable",
                    retry_after=RETRY_AFTER,
                ) from None
            raise GatewayError(502, f"lookup failed: {why}", code="upstream_unavailable") from None
        try:
            ctype = resp.head.headers.get("content-type", "application/json")
            headers = {"x-request-id": rid, "Content-Type": ctype}
            cookies = pass_upstream_headers(resp.head.headers, headers)
            if resp.status in (429, 503):
                # (a server's back-off kept, as a follow-up's answer keeps it: a draining home's 503 and
                # its Retry-After, review s26-rev-prev26 F7; a 429 without one gets the default)
                wait = retry_after_s(resp.head.headers.get("retry-after"))
                if wait is not None or resp.status == 429:
                    headers["Retry-After"] = RETRY_AFTER_DEFAULT if wait is None else str(wait)
            # Made through a model rewrite: the client's name put back, as in the create's answer (review
            # s19-qa2 L2): a JSON object's first ``"model"`` (its own), a stream's as each event passes.
            models = proxy.response_models.home(response_id) if 200 <= resp.status < 300 else None
            put_back: PieceRewriter | StreamRelay | None = None
            if models is not None:
                sent_model, client_model = models
                if ctype.startswith("text/event-stream"):
                    put_back = StreamRelay(sent_model, client_model, strip_usage=False)
                else:
                    put_back = PieceRewriter(sent_model, client_model, proxy.whole_max)
            length = None
            if put_back is None or (isinstance(put_back, PieceRewriter) and put_back.same_length):
                with contextlib.suppress(KeyError, ValueError):
                    length = int(resp.head.headers["content-length"])
            out = StreamResponse(resp.status, headers, length, cookies)
            await out.prepare(request)
            if request.method == "HEAD":
                # (its head is all it answers: reading on would hold the client's connection, a slot and
                # the upstream stream for as long as a background response generates, review s22-gw F3);
                # an answer already all here is dropped and its connection kept (review s22-late F4)
                if resp.received:
                    resp.read_now()
                else:
                    resp.close()
                await out.write_eof()
                return out
            while True:
                try:
                    chunk = await resp.read_chunk()
                except _ERRORS as e:
                    log.warning("%s: lookup answer from %s cut: %s: %s", rid, ep.address, type(e).__name__, e)
                    out.abort()  # the client must see an incomplete body, not a short one
                    return out
                if not chunk:
                    break
                if put_back is not None:
                    chunk = put_back.feed(chunk)
                    if not chunk:
                        continue
                await out.write(chunk)
            if put_back is not None and (rest := put_back.finish()):
                await out.write(rest)
            await out.write_eof()
            return out
        except ConnectionResetError:
            resp.close()  # the client went away: the server stops sending to nobody
            return out
        finally:
            resp.release()
