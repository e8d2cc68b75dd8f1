"""``session-affinity-scorer``: send a session's requests back to the endpoint that served it last.

The map session key -> endpoint address is an LRU bounded by ``maxSessions`` (100,000), so a flood of
one-off session ids cannot grow memory; entries for removed endpoints simply stop matching. The key is
held as its 64-bit xxh3 digest, not as sent: a client's ``x-session-id`` (up to the 64 KiB head) or body
``user`` (up to ``maxBodyBytes``) would otherwise pin its own size per entry (review s28-qa Q3). Equal keys
have equal digests, so a session routes as before; a collision (~1e-10 over 100,000 sessions) only costs
an affinity hint.

llm-d's scorer holds nothing: the pod rides in a cookie (its ``session_affinity.go``, qa36a F4). kvgate's
does that too, so a client that keeps cookies and sends no session key is pinned, as llm-d's sample says
("without requiring any client-side code changes"): the ``llm-d-session`` cookie of the request's ``cookie``
header, base64 (standard alphabet) of the endpoint that served it, scores that endpoint 1.0 (ahead of the
``session_key`` map); both doors answer each request this scorer's picker picked with
``Set-Cookie: llm-d-session=...; Path=/; HttpOnly; SameSite=Lax`` (``Max-Age`` from ``maxAge`` when > 0),
unless the request's cookie already says that endpoint (``response_cookie``). kvgate's token is the endpoint's
reference name (``<pod>-rank-<i>``) when discovered, else a digest of its address; a reference EPP's token,
``<namespace>/<name>``, is read by its name.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Params, PluginHandle, PostPick, Scorer
from kvgate.scheduling.registry import register

_CYCLE_KEY = "session-affinity-digest"
COOKIE = "llm-d-session"  # llm-d's SessionCookieName
# The key of the address digest (any text). Unset: a random one, put in this process's environment so
# that ``--workers``' spawned workers inherit it; replicas that must read each other's cookie share it.
COOKIE_KEY_ENV = "KVGATE_SESSION_COOKIE_KEY"
_key: bytes | None = None


def cookie_key() -> bytes:
    """This process's digest key (``COOKIE_KEY_ENV``'s, else a random one it then holds). The supervisor
    of ``--workers`` calls it before spawning, so every worker names an endpoint alike."""
    global _key
    if _key is None:
        text = os.environ.get(COOKIE_KEY_ENV)
        if not text:
            text = os.environ[COOKIE_KEY_ENV] = secrets.token_hex(16)
        _key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=32).digest()
    return _key


def endpoint_token(ep: Endpoint) -> str:
    """What the cookie names for ``ep`` (before base64): its reference name when discovered, else a keyed
    digest of its address (``kvgate-<16 hex>``, BLAKE2b keyed by ``cookie_key``: an unkeyed one gave the
    address back by brute force over a /16, rev-c36 F1). No internal address handed to clients; a new
    random key (a restart without ``COOKIE_KEY_ENV``) only costs each cookie one pick without affinity."""
    if ep.name:
        return ep.name
    digest = hashlib.blake2b(ep.address.encode(), key=cookie_key(), digest_size=8).hexdigest()
    return f"kvgate-{digest}"


def session_cookie(headers: Mapping[str, str]) -> str | None:
    """The request's ``llm-d-session`` cookie value, one surrounding DQUOTE pair stripped (None: none).
    (Envoy folds an HTTP/2 request's split ``cookie`` headers with commas: both separators are read. RFC
    6265 4.1.1 allows ``"value"``; aiohttp's jar quotes a base64 value with ``=`` so: rev-c36 F5.)"""
    raw = headers.get("cookie")
    if not raw or COOKIE not in raw:
        return None
    for crumb in raw.replace(",", ";").split(";"):
        name, eq, value = crumb.strip().partition("=")
        if eq and name == COOKIE:
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                return value[1:-1]
            return value
    return None


def _cookie_target(cycle: CycleState) -> str | None:
    """The endpoint token the request's cookie names (a reference ``namespace/name``: its name)."""
    value = session_cookie(cycle.request.headers)
    if not value:
        return None
    try:
        token = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None  # (not ours, or mangled: no affinity, as llm-d's on a decode error)
    return token.rpartition("/")[2] or None


def session_digest(key: str) -> int:
    """What the scorer keeps for ``key``: a fixed-size digest, whatever the key's length."""
    return xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogatepass"))


def _digest(cycle: CycleState) -> int | None:
    """The request's session digest, hashed once per cycle (score, then on_picked)."""
    key = cycle.request.session_key
    if not key:
        return None
    digest = cycle.data.get(_CYCLE_KEY)
    if digest is None:
        digest = cycle.data[_CYCLE_KEY] = session_digest(key)
    return digest


@register("session-affinity-scorer")
class SessionAffinityScorer(Scorer, PostPick):
    bounded = True

    def __init__(
        self, name: str, handle: PluginHandle, max_sessions: int = 100_000, max_age: int = 0
    ) -> None:
        super().__init__(name, handle)
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[int, str] = OrderedDict()  # session_digest(key) -> address
        # llm-d's ``maxAge``: the cookie's Max-Age in seconds, 0 a session cookie (its default)
        self.cookie_attrs = f"; Path=/{f'; Max-Age={max_age}' if max_age > 0 else ''}; HttpOnly; SameSite=Lax"

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> SessionAffinityScorer:
        s = cls(
            name, handle, params.get_int("maxSessions", 100_000, min=1), params.get_int("maxAge", 0, min=0)
        )
        params.finish()
        return s

    def cookie_for(self, request: Any, endpoint: Endpoint) -> str | None:
        """The ``Set-Cookie`` value naming ``endpoint`` for the answer to ``request`` (None: its cookie
        already names it, as llm-d's ``ResponseReceived`` skips)."""
        token = base64.b64encode(endpoint_token(endpoint).encode("utf-8")).decode("ascii")
        if session_cookie(request.headers) == token:
            return None
        return f"{COOKIE}={token}{self.cookie_attrs}"

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        target = _cookie_target(cycle) if COOKIE in cycle.request.headers.get("cookie", "") else None
        if target is not None:
            scores = [1.0 if target == endpoint_token(ep) else 0.0 for ep in endpoints]
            if 1.0 in scores:  # (its endpoint gone or filtered out: the session key may still say)
                return scores
        digest = _digest(cycle)
        last = self.sessions.get(digest) if digest is not None else None
        if last is None:
            return [0.0] * len(endpoints)
        return [1.0 if ep.address == last else 0.0 for ep in endpoints]

    def on_picked(self, cycle: CycleState, endpoint: Endpoint) -> None:
        digest = _digest(cycle)
        if digest is None:
            return
        self.sessions[digest] = endpoint.address
        self.sessions.move_to_end(digest)
        if len(self.sessions) > self.max_sessions:
            self.sessions.popitem(last=False)


def response_cookie(director: Any, request: Any, endpoint: Endpoint) -> str | None:
    """The ``Set-Cookie`` value a door adds to the answer to ``request`` served by ``endpoint``: one when
    ``director``'s picker has a ``session-affinity-scorer`` (its first), else None. The scan of its
    plugins is done once per director (a reload builds a new one)."""
    scorers = getattr(director, "_session_cookie_scorers", None)
    if scorers is None:
        plugins = getattr(getattr(director, "handle", None), "plugins", None) or {}
        scorers = [p for p in plugins.values() if isinstance(p, SessionAffinityScorer)]
        with contextlib.suppress(AttributeError):  # (a director with slots: asked again, still right)
            director._session_cookie_scorers = scorers
    return scorers[0].cookie_for(request, endpoint) if scorers else None
