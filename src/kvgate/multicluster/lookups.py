"""``kvgate serve --clusters``: ``GET /v1/responses/{id}`` and ``POST /v1/responses/{id}/cancel`` sent where
the response was made (vLLM keeps it in the memory of the server that made it: ``openai.responses``).

The global gateway remembers the cluster (and, in Endpoint mode, the pod) that answered each Responses id
(``GlobalGateway.responses``); an id it does not know (its restart, an id past ``HOMES_MAX`` /
``HOMES_TTL_S``; one whose remembered home is a cluster no longer in the clusters file, removed or renamed:
``known_home``) is asked of the clusters' gateways first (``ClusterLocator``: ``GET /v1/responses/{id}``,
which a ``kvgate serve`` there answers from where the response is kept, asking its own endpoints if it must),
for a lookup as for a follow-up (prev26). A lookup goes to that pod (Endpoint mode), else to that cluster's
gateway (Parent mode: a ``kvgate serve`` there sends it on to its endpoint the same way); after a connection
error at the pod (or no answer), to that cluster's gateway when it has one. An id found nowhere goes to the
first cluster, in the clusters file's order, that has a gateway and is
available (not found hung, not backing off; else the first with a gateway), whose gateway sends it to an
endpoint, whose server answers its own 404 for an id it does not hold. Each try is bounded as a request is
(``GlobalRouter._post``, review s19-qa2 M1): a stream's head (``?stream=true``) by the clusters file's
``head_timeout_s``; past it a plain answer's by a probe of the gateway (or pod), none = hung (504, the next
address); before, each waited the 300 s read timeout. An id whose home cluster is found hung
(``ClusterState.hung_at``, no aggregate since) is answered 504 at once: it cannot be answered elsewhere. With
Endpoint-mode clusters only there is nowhere to send it: an EPP picks a pod from a request's body, and a
lookup has none; the global gateway answers 404 ``response_not_found`` itself.
``limits.requestTimeoutSeconds`` bounds a lookup as a request: its head (504 ``request_timeout``), its body; a
lookup cut at the bound charges its cluster as a request's cut does (only if it held the larger part of the
bound, and, after its head, was not steady: closing note s20). An id made through an Endpoint-mode EPP that
rewrote its model has the client's name put back in the answer (``GlobalGateway.response_models``), as the
create's answer had it; in Parent mode the cluster's gateway puts it back. A lookup generates nothing: no
cluster pick, no EPP, no cluster accounting or token metrics, no back-off but a cut's (a gateway found hung is
marked, as by a request); its answer is relayed as it comes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote

import aiohttp
import orjson

from kvgate.httpfront.budget import ByteBudget
from kvgate.httpfront.server import Request, Response, StreamResponse, json_error
from kvgate.multicluster.router import ENDPOINT, PARENT, Deadline, NoHead, NoRoute, PastDeadline
from kvgate.openai.askrounds import CLUSTER_UNSURE, AskRounds, Found
from kvgate.openai.progress import Progress, progress_events, progress_piece
from kvgate.openai.responses import lookup_target
from kvgate.openai.sse import SSEScanner, rewrite_model

if TYPE_CHECKING:
    from kvgate.multicluster.serve import GlobalGateway
    from kvgate.multicluster.state import ClusterState

log = logging.getLogger("kvgate.multicluster")

_DROP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"}
)
CONNECT_TIMEOUT_S = 5.0
# A JSON answer held whole to put the client's model back (``_relay``): at most this, and from a budget all
# lookups share; past either it is relayed as it comes, unchanged.
HOLD_MAX = 16 << 20
_HELD = ByteBudget(64 << 20)


# Asking the clusters' gateways where an unknown id is kept (``ClusterLocator``): the round's bound (a
# ``kvgate serve`` there may ask its own endpoints for up to 2 s: gateway.locate), how many asks at once
# (one round's, all rounds'), and how long an id found nowhere is remembered (a client retrying a lost id:
# one round per that).
LOCATE_S = 3.0
FANOUT = 16
ASKS_MAX = 64
MISS_TTL_S = 2.0
MISSES_MAX = 4096
_CREDENTIALS = ("authorization", "x-api-key", "proxy-authorization")


class ClusterLocator(AskRounds):
    """Where an id the global gateway does not know is kept: asked of every cluster with a gateway (Parent
    mode), ``FANOUT`` at a time (``ASKS_MAX`` across all rounds), within ``LOCATE_S``; the first 200 names
    the home cluster. The round is ``openai.askrounds``' (as ``kvgate serve``'s): shared per (id,
    credentials, clusters asked), cancelled when its last waiter leaves (a client gone, its request's bound
    passed), a miss remembered ``MISS_TTL_S`` per (id, clusters asked). A cluster's 502/503/504 is its own
    "could not ask" (``CLUSTER_UNSURE``: it may hold the id), another 5xx an answer (not there, never kept).
    An Endpoint-mode cluster without a gateway cannot be asked (an EPP picks a pod from a body; a lookup
    has none): not counted; one found hung is not asked but counted as not answering."""

    def __init__(self, gw: GlobalGateway) -> None:
        super().__init__(
            gw.router.clock, log, noun="clusters", bound_s=LOCATE_S, fanout=FANOUT, asks_max=ASKS_MAX,
            miss_ttl_s=MISS_TTL_S, misses_max=MISSES_MAX, unsure=CLUSTER_UNSURE,
        )  # fmt: skip
        self.gw = gw

    async def find(self, response_id: str, headers: Mapping[str, str], due: float | None = None) -> Found:
        """``due``: the request's bound (loop time): its wait ends there (TimeoutError), and with the last
        waiter gone the round too."""
        router = self.gw.router
        clusters = {st.name: st for st in router.state_list() if st.spec.gateway is not None}
        # (a round is shared only by callers with the same credentials, a refused key must not answer for
        # another: review s26-rev-prev26 F1; its asks carry those and nothing else, as kvgate serve's do:
        # not its first caller's cookie or request id on the others' behalf, review s27-rev-loc27 F3)
        credentials = "".join(f"{h}: {headers.get(h, '')}\r\n" for h in _CREDENTIALS)
        fwd = {h: headers[h] for h in _CREDENTIALS if h in headers}
        path = "/v1/responses/" + quote(response_id, safe="")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=LOCATE_S)

        async def ask(name: str, due: float) -> int | None:
            st = clusters[name]
            if st.hung_at is not None and st.hung_at == st.fetched_at:
                return None  # (found hung, no aggregate since: not asked, as no lookup goes there)
            deadline = Deadline(due - self.bound_s, due)
            url = f"http://{st.spec.gateway}{path}"
            try:
                resp = await router._post(st, PARENT, url, None, fwd, timeout, False, "GET", deadline)
            except (PastDeadline, NoHead, aiohttp.ClientError, TimeoutError, OSError):
                return None
            try:
                return resp.status
            finally:
                resp.release()

        return await self.locate(response_id, credentials, list(clusters), ask, due)

    async def home_of(
        self, response_id: str, headers: Mapping[str, str], deadline: Deadline | None
    ) -> tuple[str, None] | NoRoute | None:
        """A follow-up's or a lookup's unknown id asked of the clusters (``find``): its home (cluster, no
        pod), remembered; None: found nowhere (routed as before, the 404 then true); the request's answer
        instead: 504 ``request_timeout`` past ``deadline``, 503 with ``Retry-After`` when a cluster could
        not answer (it may be kept there)."""
        try:
            found = await self.find(response_id, headers, None if deadline is None else deadline.due)
        except TimeoutError:
            assert deadline is not None
            why = deadline.message("the clusters were being asked where the response is kept")
            return NoRoute(504, why, [], code="request_timeout")
        if found.home is not None:
            home = (found.home, None)
            self.gw.responses.remember(response_id, home)
            return home
        if found.unanswered:  # (may be kept there, a key refused elsewhere or not: s26-rev-fixes26 F3)
            why = not_located(response_id, found)
            return NoRoute(503, why, [], retry_after=1, code="upstream_unavailable")
        return None


def not_located(response_id: str, found: Found) -> str:
    """The 503's message for an id found nowhere while some cluster could not be asked."""
    return (
        f"response '{response_id}' was not found, and {found.unanswered} of {found.asked} clusters could not"
        " be asked (it may be kept there): retry later"
    )


def known_home(gw: GlobalGateway, response_id: str) -> tuple[str, str | None] | None:
    """The remembered home of ``response_id`` while its cluster is in the clusters file. A home cluster
    gone from it (removed, or renamed: the same gateway under a new name) is forgotten, and the id is then
    asked of the clusters as an unknown one (as ``kvgate serve`` asks for a home no longer in its pool;
    before, such an id went to the first cluster's 404 for up to ``HOMES_TTL_S``: review s27-rev-loc27 F1)."""
    home = gw.responses.home(response_id)
    if home is not None and home[0] not in gw.router.states:
        gw.responses.forget(response_id)
        return None
    return home


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
    router = gw.router
    # The request's bound (``limits.requestTimeoutSeconds``) holds for a lookup's head too: past it, 504.
    deadline = Deadline.after(asyncio.get_running_loop().time(), router.cfg.request_timeout_s)
    if known_home(gw, response_id) is None:
        located = await gw.locator.home_of(response_id, request.headers, deadline)
        if isinstance(located, NoRoute):
            e = located
            why = f"lookup failed: {e.message}" if e.status == 504 else e.message
            retry = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else None
            return json_error(e.status, why, code=e.code, headers=retry)
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
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    suffix = request.path + (f"?{request.query}" if request.query else "")
    stream = parse_qs(request.query).get("stream", [""])[-1].lower() == "true"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=300)
    last = ""
    status = 502
    loop = asyncio.get_running_loop()
    gw.inflight += 1
    gw._idle.clear()
    try:
        for st, address, mode in where:
            sent_at = loop.time()
            try:
                # Bounded as a request is (``GlobalRouter._post``): a stream's head by head_timeout_s, past
                # it a plain answer's by a probe of the gateway; a cluster found hung is left.
                resp = await router._post(
                    st, mode, f"http://{address}{suffix}", None, headers, timeout, stream, method, deadline
                )
            except PastDeadline as e:
                assert deadline is not None
                if e.sent_at is not None and deadline.owned(e.sent_at):
                    st.failed(router.clock(), "a lookup cut at its bound")  # as a request's cut: it held
                    # the larger part, no head
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
                model = gw.response_models.home(response_id) if 200 <= resp.status < 300 else None
                return await _relay(request, resp, st, model, deadline, sent_at, router.clock)
            finally:
                resp.release()
        home = gw.responses.home(response_id)
        if status == 502 and home is not None and home[0] == where[0][0].name:
            # (its home cluster, known or just found, could not be reached: down, draining or restarting;
            # nowhere else keeps it: a 503 to retry, as a follow-up's there, not a 502; F7)
            why = f"lookup failed: {last}, which holds response '{response_id}', could not be reached"
            return json_error(503, f"{why}: retry later", code="upstream_unavailable",
                              headers={"Retry-After": "1"})  # fmt: skip
        code = "upstream_timeout" if status == 504 else "upstream_unavailable"
        return json_error(status, f"lookup failed: {last}", code=code)
    finally:
        gw.inflight -= 1
        if not gw.inflight:
            gw._idle.set()


async def _relay(
    request: Request,
    resp: aiohttp.ClientResponse,
    st: ClusterState,
    model: str | None = None,
    deadline: Deadline | None = None,
    sent_at: float = 0.0,
    clock: Callable[[], float] | None = None,
) -> Response | StreamResponse:
    """``model``: the name the client sent for a response made through an EPP's rewrite, put back (a JSON
    answer's ``model``, held whole up to ``HOLD_MAX``; each event's of a stream, as ``kvgate.openai.sse``
    puts it back in a create's stream); None: relayed as it comes. ``deadline``: the request's bound, over
    the body too (as ``kvgate serve``'s lookups): a body still coming then is cut (the connection closed
    mid-body; one held whole before anything went out: 504 ``request_timeout``). A cut answer charges its
    cluster (``st``, sent the lookup at ``sent_at``, loop time) as a request's does: only if it held the
    larger part of the bound and was not steady (``kvgate.openai.progress``: pieces with more than
    blanks, or an event stream's data events, all through the later half of its hold)."""
    cluster = st.name
    due = None if deadline is None else deadline.due
    progress = None if due is None else Progress(sent_at, due)
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP}
    # A repeated Set-Cookie collapses in the dict: each line goes out a line each, as a routed answer's
    # (``Routed.set_cookies``, rev-a33-I2; small33: the lookups' relay kept only the last).
    cookies: tuple[str, ...] = ()
    if "Set-Cookie" in resp.headers:
        cookies = tuple(resp.headers.getall("Set-Cookie"))
        headers = {k: v for k, v in headers.items() if k.lower() != "set-cookie"}
    headers["x-kvgate-cluster"] = cluster
    sse = resp.headers.get("Content-Type", "")[:17].lower() == "text/event-stream"
    scanner = SSEScanner(rewrite_to=model) if model is not None and sse else None
    length = None
    if model is not None:
        held = asyncio.timeout_at(due)
        try:
            async with held:
                body = None if sse else await _held(resp)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:  # (nothing sent yet)
            if held.expired() and deadline is not None:
                _charge(st, deadline, sent_at, None, clock)  # (held whole: no piece seen, never steady)
                why = deadline.message(f"cluster {cluster}'s answer had not come whole")
                return json_error(504, f"lookup failed: {why}", code="request_timeout")
            return json_error(502, f"lookup failed: cluster {cluster}: {type(e).__name__}",
                              code="upstream_unavailable")  # fmt: skip
        if body is not None:  # (whole: rewritten, its own length)
            with contextlib.suppress(orjson.JSONDecodeError):
                doc = orjson.loads(body)
                if rewrite_model(doc, model):
                    body = orjson.dumps(doc)
            out = StreamResponse(resp.status, headers, len(body), cookies)
            await out.prepare(request)
            await out.write(body)
            await out.write_eof()
            return out
    else:
        with contextlib.suppress(KeyError, ValueError):
            length = int(resp.headers["Content-Length"])
    out = StreamResponse(resp.status, headers, length, cookies)
    await out.prepare(request)
    timer = asyncio.timeout_at(due)
    try:
        async with timer:
            async for chunk in resp.content.iter_any():
                if progress is not None and (progress_events(chunk) if sse else progress_piece(chunk)):
                    progress.seen(asyncio.get_running_loop().time())
                if scanner is not None:
                    chunk = scanner.feed(chunk)
                    if not chunk:
                        continue
                await out.write(chunk)
            if scanner is not None and (rest := scanner.finish()):
                await out.write(rest)
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        if isinstance(e, ConnectionResetError):
            raise  # (the client went away)
        if timer.expired():
            log.warning("lookup answer from cluster %s cut at limits.requestTimeoutSeconds", cluster)
            if deadline is not None:
                _charge(st, deadline, sent_at, progress, clock)
        else:
            log.warning("lookup answer from cluster %s cut: %s: %s", cluster, type(e).__name__, e)
        out.abort()  # the client must see an incomplete body, not a short one
        return out
    await out.write_eof()
    return out


def _charge(
    st: ClusterState,
    deadline: Deadline,
    sent_at: float,
    progress: Progress | None,
    clock: Callable[[], float] | None,
) -> None:
    """A lookup's answer cut at the bound: its cluster charged (backs off) as a request's would be
    (``serve._Late``: review s20-mc M1), only if it owned the deadline and was not steady."""
    if deadline.owned(sent_at) and (progress is None or not progress.steady()) and clock is not None:
        st.failed(clock(), "a lookup's answer cut at its bound")


async def _held(resp: aiohttp.ClientResponse) -> bytes | None:
    """A JSON answer read whole; None (nothing read: relayed on unchanged) when its length is not given,
    or over ``HOLD_MAX`` or the budget all lookups share."""
    length = resp.content_length
    if length is None or length > HOLD_MAX or not _HELD.take(length):
        return None
    try:
        return await resp.read()
    finally:
        _HELD.give(length)
