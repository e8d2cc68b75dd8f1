"""Which endpoints publish KV-cache events, and where: read from the servers' own configuration.

vLLM reports its configuration at ``GET /server_info?config_format=json`` (served with
``VLLM_SERVER_DEV_MODE=1``): ``vllm_config.kv_events_config`` is the ``--kv-events-config`` it runs with
(``enable_kv_cache_events``, ``publisher``, ``endpoint``, ``replay_endpoint``, ``buffer_steps``: at 0 the
replay socket holds nothing and is not used) and
``vllm_config.model_config.tokenizer`` the tokenizer it loaded. ``kvgate sim --kv-events-port`` answers
the same keys. vLLM's address semantics: ``tcp://*:P`` (or ``0.0.0.0``) means vLLM *binds* (the gateway
connects to ``tcp://<endpoint host>:P``); a concrete host means vLLM *connects* there (the gateway binds).

Probed once per endpoint at start-up (``kvgate serve --kv-events auto``); an endpoint that does not answer,
or answers without enabled ZMQ events, publishes none.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

PROBE_PATH = "/server_info?config_format=json"
# vLLM collects its system environment (pip, GPU tools) on the first /server_info: seconds, more when loaded.
PROBE_TIMEOUT = 30.0
MAX_BODY = 1 << 22
log = logging.getLogger(__name__)
_WILDCARDS = ("*", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True, slots=True)
class KVEventsInfo:
    endpoint: str  # the address the gateway uses (connect, or bind when ``bind``)
    replay: str | None
    bind: bool  # the server connects to ``endpoint``: the gateway must bind it
    tokenizer: str | None  # the server's tokenizer (a local path or a model name), if it said


def _concrete(addr: str, host: str) -> tuple[str, bool]:
    """(address to use, server binds?) for a ZMQ address the server was configured with."""
    scheme, _, rest = addr.partition("://")
    h, _, port = rest.rpartition(":")
    if h in _WILDCARDS:
        return f"{scheme}://{host}:{port}", True
    return addr, False


def parse_server_info(doc: Any, host: str) -> KVEventsInfo | None:
    """The KV-events source in a ``/server_info`` answer of the endpoint at ``host``, or None."""
    if not isinstance(doc, dict):
        return None
    cfg = doc.get("vllm_config")
    cfg = cfg if isinstance(cfg, dict) else {}
    kv = cfg.get("kv_events_config")
    if not isinstance(kv, dict) or not kv.get("enable_kv_cache_events"):
        return None
    endpoint = kv.get("endpoint")
    if kv.get("publisher", "zmq") != "zmq" or not isinstance(endpoint, str) or "://" not in endpoint:
        return None
    addr, server_binds = _concrete(endpoint, host)
    replay = kv.get("replay_endpoint")
    replay_addr = _concrete(replay, host)[0] if isinstance(replay, str) and "://" in replay else None
    steps = kv.get("buffer_steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and steps <= 0:
        # vLLM's replay buffer is ``deque(maxlen=buffer_steps)``: at 0 its replay socket answers every
        # request with the end marker alone. No replay then: a gap resyncs at once, as its answers would.
        replay_addr = None
    model = cfg.get("model_config")
    tok = model.get("tokenizer") if isinstance(model, dict) else None
    return KVEventsInfo(addr, replay_addr, not server_binds, tok if isinstance(tok, str) and tok else None)


def probe(address: str, timeout: float = PROBE_TIMEOUT, scheme: str = "http") -> KVEventsInfo | None:
    """Ask the endpoint at ``host:port`` for its KV-events configuration (None: it publishes none)."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        with urllib.request.urlopen(f"{scheme}://{address}{PROBE_PATH}", timeout=timeout) as resp:
            body = resp.read(MAX_BODY)
        return parse_server_info(orjson.loads(body), host)
    except (OSError, ValueError, urllib.error.URLError) as e:
        log.info("kv-events probe of %s: %s", address, e)
        return None


def probe_all(
    addresses: list[str], timeout: float = PROBE_TIMEOUT, scheme: str = "http"
) -> dict[str, KVEventsInfo]:
    """Endpoints that publish KV events, probed in parallel (start-up only: blocking is fine there)."""
    if not addresses:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as pool:
        found = pool.map(lambda a: (a, probe(a, timeout, scheme)), addresses)
        return {a: info for a, info in found if info is not None}
