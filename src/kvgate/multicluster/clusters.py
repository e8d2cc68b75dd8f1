"""The clusters file: which clusters a global gateway routes to, and how (static, hot reload).

```yaml
local: east                 # this gateway's own cluster (preferred while it has room); optional
ttl_s: 3.0                  # aggregates older than this are unknown (never "idle")
refresh_s: 0.5              # how often aggregates and EPP health are fetched
epp_timeout_s: 2.0          # Endpoint mode: the EPP's deadline to answer each message (pick, response)
head_timeout_s: 120.0       # a stream's longest wait for its head; past it a non-streamed one probes
probe_timeout_s: 2.0        # a suspect cluster gateway's (or pod's) deadline to answer GET /healthz
# destination_fallbacks: false  # the hub EPP only (kvgate serve --clusters refuses it): true names the others
tls: {ca: ca.pem, cert: client.pem, key: client.key}   # client TLS for https aggregates (mTLS with cert)
limits: {requestTimeoutSeconds: 600}   # the front's limits and the whole request's bound (0: none, default);
                            # maxWaitingBytesPerClient: a client's share of the bodies waiting to be parsed;
                            # drainTimeoutSeconds: the stop's drain (30 s default, as kvgate serve's)
clusters:
- name: east
  aggregate: http://10.1.0.2:9090/v1/pool/aggregate   # a kvgate's /v1/pool/aggregate
  gateway: 10.1.0.2:8080    # Parent mode: the cluster-local gateway (host:port)
  epp: 10.1.0.2:9002        # Endpoint mode: the cluster's EPP (ext_proc); omit for Parent mode only
  epp_tls: false
  health: 10.1.0.2:9003     # the EPP's gRPC health port (active-passive)
  rtt_ms: 5
  priority: 0               # active-passive order (lowest first)
  epp_timeout_s: 4.0        # this cluster's EPP deadline (default: the top-level one)
```

``ClustersFile.maybe_reload(now)`` re-reads the file when its ``filestamp`` (inode, size, mtime, ctime)
changes (checked at most every ``check_every_s``); a file that fails to parse keeps the last good list
and logs why. Everything in it applies live (clusters, ``ttl_s``, ``refresh_s``, ``epp_timeout_s``,
``head_timeout_s``, ``probe_timeout_s``, ``destination_fallbacks`` (the hub EPP's next picks),
``tls``, ``limits`` with ``requestTimeoutSeconds`` and ``maxWaitingBytesPerClient`` (to requests that start
after the reload) and ``drainTimeoutSeconds`` (read when the stop begins),
and the ``kubernetes`` section: ``kvgate.multicluster.source.ClusterSource`` restarts the import controller).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from kvgate import yamlload
from kvgate.filestamp import FileStamp, file_stamp
from kvgate.httpfront.server import LIMIT_KEYS, FrontLimits, parse_limits

log = logging.getLogger("kvgate.multicluster")


class ClustersError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


EPP_TIMEOUT_S = 2.0
# The longest a stream waits for a cluster's response head (as ``kvgate serve``'s ``idleTimeoutSeconds``
# bounds only a stream's head): past it the cluster is taken as hung and the request moves on. A
# non-streamed answer's head comes with the whole answer: past it the cluster's gateway is probed instead
# (review s19-fixes-b M1; ``GlobalRouter._post``).
HEAD_TIMEOUT_S = 120.0
# A suspect cluster gateway's (or pod's) deadline to answer a ``GET /healthz`` probe (``GlobalRouter._live``).
PROBE_TIMEOUT_S = 2.0
# ``limits.requestTimeoutSeconds``: the gateway config's key (``kvgate serve``), read here beside the
# front's ``limits`` (``parse_limits``): the whole request's bound, from its body's arrival; 0: none.
REQUEST_TIMEOUT_KEY = "requestTimeoutSeconds"
# ``limits.maxWaitingBytesPerClient``: the gateway config's key too, a client's share of the body budget for
# its bodies waiting for the parse thread (``httpfront.offload``); 0: a quarter of ``maxBufferedBytes``.
WAITING_SHARE_KEY = "maxWaitingBytesPerClient"
# ``limits.drainTimeoutSeconds``: the gateway config's key and default too: how long a stop (SIGTERM) lets
# the requests in flight finish before it cuts them (qa27 Q3: before, 5 s, and the key was refused); 0: no
# wait, cut at once.
DRAIN_TIMEOUT_KEY = "drainTimeoutSeconds"
DRAIN_TIMEOUT_S = 30.0
# The hub EPP's choice of one address or a fallback list in its destination header (``ClusterDirector``).
FALLBACKS_KEY = "destination_fallbacks"
# (read here, not by the front's ``parse_limits``)
_OWN_LIMITS = (REQUEST_TIMEOUT_KEY, WAITING_SHARE_KEY, DRAIN_TIMEOUT_KEY)
# ``--config`` with ``--clusters`` (``kvgate serve``, ``kvgate epp``): refused, not silently ignored (review
# s16-k8s F6): the clusters file is the whole configuration there.
NOT_WITH_CONFIG = (
    "not with --clusters: the clusters file is the whole configuration of the multi-cluster gateway "
    "(docs/multicluster.md), so nothing would read --config (its kubernetes.staleAfterSeconds included: "
    "give --kube-stale-after for the members' watches)"
)


def _short(v: Any) -> str:
    """``v`` for a message, cut to 60 characters (a 400-digit integer is read as one)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 200:
        return f"an integer of {v.bit_length()} bits"  # (repr past 4300 digits is itself a ValueError)
    text = repr(v)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


# A number YAML 1.1 reads as a string: an exponent without a dot or without a sign (``5e-1``, ``1.5e3``,
# ``1e+06`` as Helm's toYaml writes large numbers; review s20-fixes-a L5).
_EXPONENT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+")


def _seconds(v: Any, key: str) -> float:
    # ``true`` (1 s to float()) and quoted numbers are refused (review s20-mc L1), not YAML 1.1's exponents.
    if isinstance(v, bool) or (isinstance(v, str) and not _EXPONENT.fullmatch(v.strip())):
        raise ClustersError(key, f"expected a number of seconds, got {_short(v)}")
    try:
        out = float(v)
    except (TypeError, ValueError, OverflowError):  # (an integer too large for a float: OverflowError)
        raise ClustersError(key, f"expected a number of seconds, got {_short(v)}") from None
    # ``.nan`` fails every comparison; ``.inf`` is no bound (s19-qa M1).
    if not (math.isfinite(out) and out > 0):
        raise ClustersError(key, f"expected a finite positive number of seconds, got {v!r}")
    return out


def _limit_seconds(v: Any, name: str, zero: str) -> float:
    """``limits.<name>`` (``requestTimeoutSeconds``, ``drainTimeoutSeconds``): a finite number of seconds
    >= 0 (``zero`` says what 0 means), as the gateway config's keys."""
    key = f"limits.{name}"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ClustersError(key, f"expected a finite number of seconds >= 0 (0: {zero}), got {_short(v)}")
    try:
        out = float(v)
    except OverflowError:  # (an integer too large for a float)
        raise ClustersError(key, f"expected a finite number of seconds >= 0, got {_short(v)}") from None
    if not (math.isfinite(out) and out >= 0):
        raise ClustersError(key, f"expected a finite number of seconds >= 0 (0: {zero}), got {v!r}")
    return out


def _waiting_share(v: Any) -> int:
    """``limits.maxWaitingBytesPerClient``: an integer >= 0 (0: a quarter of ``maxBufferedBytes``), as the
    gateway config's key."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ClustersError(f"limits.{WAITING_SHARE_KEY}", f"expected an integer >= 0 (0: a quarter of "
                            f"maxBufferedBytes), got {_short(v)}")  # fmt: skip
    return v


def _rtt_ms(v: Any, key: str) -> float:
    try:
        out = float(v)
    except (TypeError, ValueError, OverflowError):
        raise ClustersError(key, f"expected a number of milliseconds, got {_short(v)}") from None
    if not (math.isfinite(out) and out >= 0):
        raise ClustersError(key, f"expected a finite number of milliseconds >= 0, got {v!r}")
    return out


def _int(v: Any, key: str) -> int:
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):  # (int(.nan) is a ValueError, int(.inf) an OverflowError)
        raise ClustersError(key, f"expected an integer, got {v!r}") from None


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    name: str
    aggregate: str | None = None
    gateway: str | None = None
    epp: str | None = None
    epp_tls: bool = False
    health: str | None = None
    rtt_ms: float = 0.0
    priority: int = 0
    epp_timeout_s: float | None = None  # None: the clusters file's ``epp_timeout_s``

    @property
    def endpoint_mode(self) -> bool:
        return self.epp is not None


@dataclass(frozen=True, slots=True)
class TlsOptions:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class KubeMember:
    name: str
    server: str | None = None
    kubeconfig: str | None = None
    rtt_ms: float = 0.0
    priority: int = 0


@dataclass(frozen=True, slots=True)
class ParentRef:
    """A GIE ``ParentReference``: the Gateway a global gateway stands for in the import's ``parents[]``."""

    namespace: str
    name: str
    group: str = "gateway.networking.k8s.io"
    kind: str = "Gateway"

    def as_status(self) -> dict[str, str]:
        return {"group": self.group, "kind": self.kind, "namespace": self.namespace, "name": self.name}


DEFAULT_PARENT = "kvgate-global"  # the parent's name when the clusters file names none
# The writers' Lease when the clusters file names none: this name for the default parent, else this name
# plus the parent (``default_lease``).
DEFAULT_LEASE = "kvgate-hub-controller"


def install_id(parent: ParentRef | None) -> str:
    """An install's identity: the parent its controller writes (``group/kind/namespace/name``)."""
    if parent is None:
        return "-"
    return f"{parent.group or 'core'}/{parent.kind}/{parent.namespace}/{parent.name}"


def default_lease(namespace: str, parent: ParentRef | None) -> str:
    """The writers' Lease name of an install following an import in ``namespace`` with ``parent``, when
    its clusters file names no ``lease``: one per install (the Lease elects one writer among an
    install's replicas and its ``kvgate hub-controller``; two installs on one hub each need their own, or
    one of them never writes). The default parent (``<namespace>/kvgate-global``) keeps the plain
    ``kvgate-hub-controller``; any other parent gives ``kvgate-hub-controller-<parent name>-<hash>``, the
    hash (8 hex digits of SHA-256) over the whole parent reference, so parents that differ only in
    namespace, group or kind get distinct Leases. At most 63 characters, a valid object name."""
    if parent is None or parent == ParentRef(namespace, DEFAULT_PARENT):
        return DEFAULT_LEASE
    digest = hashlib.sha256(install_id(parent).encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9-]+", "-", parent.name.lower()).strip("-")[:32].strip("-")
    return "-".join(p for p in (DEFAULT_LEASE, readable, digest) if p)


@dataclass(frozen=True, slots=True)
class KubeImports:
    """Clusters from InferencePoolImport: the hub API server, the import to follow, the member clusters,
    and the Gateway this global gateway is written as in the import's ``parents[]``."""

    namespace: str
    name: str
    members: tuple[KubeMember, ...]
    server: str | None = None
    kubeconfig: str | None = None
    parent: ParentRef | None = None
    # True: the global gateway runs the hub controller itself (writes imports and conditions); False: it
    # only reads the members, and a standalone ``kvgate hub-controller`` writes.
    controller: bool = True
    # True: the gateways following the import route in Parent mode only (hub EPPs, ``kvgate epp
    # --clusters``), so an exporter with no ``kvgate.io/gateway`` address is not resolved (the import's
    # ``ResolvedRefs``). The hub EPP sets it for itself; a standalone ``kvgate hub-controller`` writing for
    # hub EPPs reads it from the file.
    parent_mode_only: bool = False
    # The coordination.k8s.io Lease in the hub (namespace, name) every writer of this import competes for:
    # gateways running the controller (``controller: true``) and ``kvgate hub-controller`` under leader
    # election, so one writes however many run. None: in the import's namespace, named after the install
    # (``default_lease``: ``kvgate-hub-controller`` for the default parent).
    lease: tuple[str, str] | None = None

    @property
    def lease_ref(self) -> tuple[str, str]:
        return self.lease or (self.namespace, default_lease(self.namespace, self.parent))


@dataclass(frozen=True, slots=True)
class ClustersConfig:
    clusters: tuple[ClusterSpec, ...]
    local: str | None = None
    ttl_s: float = 3.0
    refresh_s: float = 0.5
    # Endpoint mode: how long the EPP has to answer each message (the pick; the response headers; a
    # response line it owes the client). Past it the EPP counts as stalled, and is treated as failed.
    epp_timeout_s: float = EPP_TIMEOUT_S
    # How long a stream waits for its response head from a cluster (its gateway in Parent mode, the pod in
    # Endpoint mode) before that cluster counts as failed and the request moves on (nothing reached the
    # client yet); a streamed answer's later bytes are not bound by it. A non-streamed request has the
    # gateway probed past it instead (its head comes with the whole answer).
    head_timeout_s: float = HEAD_TIMEOUT_S
    # A suspect cluster gateway's (or pod's) deadline to answer a probe (``GlobalRouter._live``); past it
    # it is hung.
    probe_timeout_s: float = PROBE_TIMEOUT_S
    # ``limits.requestTimeoutSeconds``: the whole request's bound from its body's arrival (every attempt,
    # the relay of its answer included), as ``kvgate serve``'s; 0: none (each read's 300 s timeout only).
    request_timeout_s: float = 0.0
    # ``limits.maxWaitingBytesPerClient``: a client's share of ``limits.maxBufferedBytes`` for its bodies
    # waiting for the parse thread, enforced past half the budget (``httpfront.offload.off_loop``, as
    # ``kvgate serve``'s); 0: a quarter of the budget.
    max_waiting_bytes_per_client: int = 0
    # ``limits.drainTimeoutSeconds``: how long ``kvgate serve --clusters``'s stop waits for the requests in
    # flight (streams included) before it cuts them, as ``kvgate serve``'s; 0: no wait.
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    tls: TlsOptions = field(default_factory=TlsOptions)
    kubernetes: KubeImports | None = None
    # The client-facing front's limits (``limits:``, the gateway config's key names); hot-reloaded too.
    limits: FrontLimits = field(default_factory=FrontLimits)
    # ``destination_fallbacks``, the hub EPP's only: its ``x-gateway-destination-endpoint`` names the other
    # clusters' gateways after the chosen one (a list only Envoy's Override Host policy walks; the shipped
    # ORIGINAL_DST cluster answers a list 503). None: not given (one address; ``--destination-fallbacks``).
    destination_fallbacks: bool | None = None


_CLUSTER_KEYS = {f for f in ClusterSpec.__dataclass_fields__}


def _hostport(v: Any, key: str) -> str | None:
    if v is None:
        return None
    s = str(v).removeprefix("http://").removeprefix("https://").rstrip("/")
    host, sep, port = s.rpartition(":")
    if not sep or not host.strip("[]"):
        raise ClustersError(key, f"expected host:port, got {v!r}")
    # (checked here: getaddrinfo cuts a host name's port past 65535 to 16 bits, review s16-hard L2)
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        raise ClustersError(key, f"expected a port from 1 to 65535, got {port!r} in {v!r}")
    if not _is_host(host):  # (kvhub17: a space, a path, an IPv6 address without brackets, ...)
        raise ClustersError(key, f"expected a host name, an IPv4 address or an IPv6 one in brackets, got "
                                 f"{host!r} in {v!r}")  # fmt: skip
    return s


def _aggregate_url(v: Any, key: str) -> str | None:
    """``aggregate``: an http:// or https:// URL with a host (and a port from 1 to 65535 if given), checked
    at load as ``gateway`` is (qa34b-F1: a URL without its scheme, the shape the host:port keys invite, or
    an ``ftp://`` one was taken and every fetch of it failed, the cluster unknown for good)."""
    if v is None or v == "":
        return None
    want = "expected an http:// or https:// URL (a kvgate's /v1/pool/aggregate)"
    if not isinstance(v, str):
        raise ClustersError(key, f"{want}, got {_short(v)}")
    try:
        parts = urlsplit(v.strip())
        port = parts.port  # (ValueError: not a number, or past 65535)
    except ValueError as e:
        raise ClustersError(key, f"{want}, got {v!r} ({e})") from None
    if "://" not in v:  # (``host:port/path`` parses as a scheme ``host``)
        raise ClustersError(key, f"{want}, got {v!r} (no scheme: http://{v.strip()}?)")
    if parts.scheme.lower() not in ("http", "https"):
        raise ClustersError(key, f"{want}, got {v!r} (scheme {parts.scheme!r})")
    host = parts.hostname or ""
    if not _is_host(f"[{host}]" if ":" in host else host):
        raise ClustersError(key, f"{want}, got {v!r} (no valid host)")
    if port == 0:
        raise ClustersError(key, f"expected a port from 1 to 65535, got 0 in {v!r}")
    return v.strip()


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def idna_host(host: str) -> str:
    """``host`` as its IDNA (A-label) form, the way yarl encodes it for the aggregate fetcher (UTS #46,
    IDNA 2003 as its fallback): the name the hub probe looks up too (review s17-fixes-a L1: getaddrinfo's
    own IDNA 2003 made ``faß.example`` ``fass.example``, yarl ``xn--fa-hia.example``). An ASCII host as
    it is; ValueError (UnicodeError) for a name IDNA refuses."""
    if host.isascii():
        return host
    from yarl import URL

    return URL.build(scheme="http", host=host).raw_host or ""


def gateway_literal(gateway: str) -> tuple[str, int]:
    """A gateway as the address the hub names for it, however spelt: an IP address in one spelling
    (``[::1]`` and ``[0::1]``, an IPv4-mapped IPv6 address as its IPv4 one, an IPv4 address in a form the
    resolver reads as one, ``127.1``, ``2130706433``, ``0x7f.0.0.1``), a host name as it is looked up
    (``idna_host``, lower case: ``bücher.example`` is ``xn--bcher-kva.example``, rev-a34 F3); the port as a
    number (``08080`` is 8080). A trailing dot keeps a name apart (a search domain may tell them apart)."""
    host, _, port = gateway.rpartition(":")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            host[1:-1] if host.startswith("[") else host
        )
    except ValueError:
        try:  # (a name to ``ipaddress``, but getaddrinfo reads it as inet_aton does: no lookup)
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            try:
                return idna_host(host).lower(), int(port)
            except ValueError:  # (a name IDNA refuses was refused at parse; kept as written)
                return host.lower(), int(port)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip), int(port)


def _is_host(host: str) -> bool:
    """A host name (DNS labels: letters, digits, ``-`` inside, ``_``; 253 characters at most, a final dot
    allowed), an IPv4 address, or an IPv6 address in brackets. An internationalised name (``bücher.example``)
    is checked as its IDNA (A-label) form, the name yarl and the hub probe send (``idna_host``)."""
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    try:
        host = idna_host(host)
    except ValueError:  # (not a name IDNA takes: a space, an empty label, over 63 characters, ...)
        return False
    name = host.removesuffix(".")
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def parse(doc: Any) -> ClustersConfig:
    if not isinstance(doc, Mapping):
        raise ClustersError("(root)", "expected a mapping with a clusters list")
    kube = _kube(doc.get("kubernetes"))
    raw = doc.get("clusters", [] if kube is not None else None)
    if not isinstance(raw, list) or (not raw and kube is None):
        raise ClustersError("clusters", "expected a non-empty list (or a kubernetes section)")
    out: list[ClusterSpec] = []
    for i, c in enumerate(raw):
        key = f"clusters[{i}]"
        if not isinstance(c, Mapping) or not c.get("name"):
            raise ClustersError(key, "each cluster needs a name")
        unknown = set(c) - _CLUSTER_KEYS
        if unknown:
            raise ClustersError(key, f"unknown keys {sorted(unknown)}")
        if not c.get("gateway") and not c.get("epp"):
            raise ClustersError(key, "needs a gateway (Parent mode) or an epp (Endpoint mode)")
        out.append(
            ClusterSpec(
                name=str(c["name"]),
                aggregate=_aggregate_url(c.get("aggregate"), f"{key}.aggregate"),
                gateway=_hostport(c.get("gateway"), f"{key}.gateway"),
                epp=_hostport(c.get("epp"), f"{key}.epp"),
                epp_tls=bool(c.get("epp_tls", False)),
                health=_hostport(c.get("health"), f"{key}.health"),
                rtt_ms=_rtt_ms(c.get("rtt_ms", 0.0), f"{key}.rtt_ms"),
                priority=_int(c.get("priority", 0), f"{key}.priority"),
                epp_timeout_s=_seconds(c["epp_timeout_s"], f"{key}.epp_timeout_s")
                if c.get("epp_timeout_s") is not None
                else None,
            )
        )
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ClustersError("clusters", "cluster names must be unique")
    local = doc.get("local")
    members = [m.name for m in kube.members] if kube is not None else []
    if local is not None and local not in names and local not in members:
        raise ClustersError("local", f"{local!r} is not one of the clusters (or kubernetes members)")
    tls = doc.get("tls") or {}
    if not isinstance(tls, Mapping):
        raise ClustersError("tls", "expected a mapping")
    raw_limits = doc.get("limits")
    request_timeout, waiting_share, drain_timeout = 0.0, 0, DRAIN_TIMEOUT_S
    if isinstance(raw_limits, Mapping):
        unknown_limits = [k for k in raw_limits if k not in LIMIT_KEYS and k not in _OWN_LIMITS]
        if unknown_limits:
            known = ", ".join([*LIMIT_KEYS, *_OWN_LIMITS])
            raise ClustersError(f"limits.{unknown_limits[0]}", f"unknown key (known: {known})")
        raw_limits = dict(raw_limits)
        if REQUEST_TIMEOUT_KEY in raw_limits:
            request_timeout = _limit_seconds(raw_limits.pop(REQUEST_TIMEOUT_KEY), REQUEST_TIMEOUT_KEY, "none")
        if DRAIN_TIMEOUT_KEY in raw_limits:
            drain_timeout = _limit_seconds(raw_limits.pop(DRAIN_TIMEOUT_KEY), DRAIN_TIMEOUT_KEY, "no wait")
        if WAITING_SHARE_KEY in raw_limits:
            waiting_share = _waiting_share(raw_limits.pop(WAITING_SHARE_KEY))
    fallbacks = doc.get(FALLBACKS_KEY)
    if fallbacks is not None and not isinstance(fallbacks, bool):
        raise ClustersError(FALLBACKS_KEY, f"expected true or false, got {_short(fallbacks)}")
    try:
        limits = parse_limits(raw_limits)
    except ValueError as e:
        key, _, why = str(e).partition(": ")
        raise ClustersError(key, why) from None
    return ClustersConfig(
        clusters=tuple(out),
        local=local,
        ttl_s=_seconds(doc.get("ttl_s", 3.0), "ttl_s"),
        refresh_s=_seconds(doc.get("refresh_s", 0.5), "refresh_s"),
        epp_timeout_s=_seconds(doc.get("epp_timeout_s", EPP_TIMEOUT_S), "epp_timeout_s"),
        head_timeout_s=_seconds(doc.get("head_timeout_s", HEAD_TIMEOUT_S), "head_timeout_s"),
        probe_timeout_s=_seconds(doc.get("probe_timeout_s", PROBE_TIMEOUT_S), "probe_timeout_s"),
        request_timeout_s=request_timeout,
        max_waiting_bytes_per_client=waiting_share,
        drain_timeout_s=drain_timeout,
        tls=TlsOptions(tls.get("ca"), tls.get("cert"), tls.get("key")),
        kubernetes=kube,
        limits=limits,
        destination_fallbacks=fallbacks,
    )


def _kube(doc: Any) -> KubeImports | None:
    """``kubernetes: {server|kubeconfig, import: ns/name, members: [{name, server|kubeconfig, rtt_ms}],
    parent, controller, parent_mode_only, lease}``."""
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        raise ClustersError("kubernetes", "expected a mapping")
    ref = str(doc.get("import", ""))
    ns, _, name = ref.rpartition("/")
    if not name:
        raise ClustersError("kubernetes.import", "expected namespace/name of the InferencePoolImport")
    members = doc.get("members")
    if not isinstance(members, list) or not members:
        raise ClustersError("kubernetes.members", "expected a non-empty list")
    out = []
    for i, m in enumerate(members):
        if not isinstance(m, Mapping) or not m.get("name") or not (m.get("server") or m.get("kubeconfig")):
            raise ClustersError(
                f"kubernetes.members[{i}]", "each member needs a name and a server or kubeconfig"
            )
        out.append(
            KubeMember(
                str(m["name"]),
                m.get("server"),
                m.get("kubeconfig"),
                _rtt_ms(m.get("rtt_ms", 0.0), f"kubernetes.members[{i}].rtt_ms"),
                _int(m.get("priority", 0), f"kubernetes.members[{i}].priority"),
            )
        )
    ns = ns or "default"
    controller = doc.get("controller", True)
    if not isinstance(controller, bool):
        raise ClustersError("kubernetes.controller", f"expected true or false, got {controller!r}")
    parent_only = doc.get("parent_mode_only", False)
    if not isinstance(parent_only, bool):
        raise ClustersError("kubernetes.parent_mode_only", f"expected true or false, got {parent_only!r}")
    parent = _parent(doc.get("parent"), ns)
    lease = None
    if doc.get("lease") is not None:
        lease_ns, _, lease_name = str(doc["lease"]).rpartition("/")
        if not lease_name:
            raise ClustersError("kubernetes.lease", "expected namespace/name of the Lease")
        lease = (lease_ns or ns, lease_name)
    return KubeImports(ns, name, tuple(out), doc.get("server"), doc.get("kubeconfig"), parent, controller,
                       parent_only, lease)  # fmt: skip


def _parent(doc: Any, default_ns: str) -> ParentRef:
    """``parent: namespace/name`` (a Gateway) or ``{group, kind, namespace, name}``; default
    ``<the import's namespace>/kvgate-global``."""
    if doc is None:
        return ParentRef(default_ns, DEFAULT_PARENT)
    if isinstance(doc, str):
        ns, _, name = doc.rpartition("/")
        if not name:
            raise ClustersError("kubernetes.parent", "expected namespace/name of the Gateway")
        return ParentRef(ns or default_ns, name)
    if not isinstance(doc, Mapping) or not doc.get("name"):
        raise ClustersError("kubernetes.parent", "expected namespace/name or a mapping with a name")
    unknown = set(doc) - {"group", "kind", "namespace", "name"}
    if unknown:
        raise ClustersError("kubernetes.parent", f"unknown keys {sorted(unknown)}")
    base = ParentRef(str(doc.get("namespace") or default_ns), str(doc["name"]))
    return ParentRef(
        base.namespace, base.name, str(doc.get("group", base.group)), str(doc.get("kind", base.kind))
    )


def load(path: str | Path) -> ClustersConfig:
    try:
        doc = yamlload.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, ValueError) as e:  # (ValueError: an integer past 4300 digits)
        raise ClustersError(str(path), str(e)) from e
    return parse(doc)


class ClustersFile:
    """A clusters file and its last good parse; ``on_change`` runs after each successful reload. ``check``
    (the door's own rules: ``kvgate serve`` refuses ``parent_mode_only``) raises ``ClustersError`` for a
    file this door cannot run: refused at the start as a parse error is, kept out at a reload."""

    def __init__(
        self,
        path: str | Path,
        *,
        check_every_s: float = 1.0,
        on_change: Callable[[ClustersConfig], None] | None = None,
        check: Callable[[ClustersConfig], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.check_every_s = check_every_s
        self.on_change = on_change
        self.check = check
        self._stamp = self._stat()  # before the read: an edit made during it is seen by the next poll
        self.config = self._load()
        self._checked_at: float | None = None
        self.reloads = 0
        # Each reload's result (``RELOAD_RESULTS``: applied, invalid, failed), for the door's reload metrics
        # (``kvgate serve --clusters``: ``kvgate_multicluster_config_reloads_total``; review s29-rev-a29).
        self.on_result: Callable[[str], None] | None = None

    def _load(self) -> ClustersConfig:
        cfg = load(self.path)
        if self.check is not None:
            self.check(cfg)
        return cfg

    def _stat(self) -> FileStamp | None:
        return file_stamp(self.path)

    def reload_now(self, now: float) -> bool:
        """SIGHUP: the file read now, not at the next poll, whatever its stamp (review s20-qa L5): an edit
        whose stamps (inode, size, modification and change time) all fall within one timestamp tick is seen
        only so (review s20-qa2 L2). The same config as the running one is said unchanged, and nothing is
        applied."""
        self._checked_at = now
        stamp = self._stat()
        if stamp is None:
            return False
        return self._read(stamp, sighup=True)

    def maybe_reload(self, now: float) -> bool:
        if self._checked_at is not None and now - self._checked_at < self.check_every_s:
            return False
        self._checked_at = now
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return False
        return self._read(stamp)

    def _read(self, stamp: FileStamp, sighup: bool = False) -> bool:
        self._stamp = stamp
        try:
            cfg = self._load()
        except ClustersError as e:
            log.warning("clusters file %s not reloaded (keeping the last good one): %s", self.path, e)
            self._result("invalid")
            return False
        except Exception as e:  # any parse error keeps the last good file (and the reload loop going)
            log.warning("clusters file %s not reloaded (keeping the last good one): %s: %s", self.path,
                        type(e).__name__, e)  # fmt: skip
            self._result("invalid")
            return False
        if sighup and cfg == self.config:
            log.info("SIGHUP: clusters file %s unchanged since its last read: nothing to reload", self.path)
            return False
        self.config = cfg
        self.reloads += 1
        kube = cfg.kubernetes
        log.info("clusters file reloaded: %s%s", ", ".join(c.name for c in cfg.clusters) or "(no clusters)",
                 "" if kube is None else f"; kubernetes: import {kube.namespace}/{kube.name}")  # fmt: skip
        if self.on_change is not None:
            try:
                self.on_change(cfg)
            except Exception:  # (counted, then raised as before)
                self._result("failed")
                raise
        self._result("applied")
        return True

    def _result(self, result: str) -> None:
        if self.on_result is not None:
            self.on_result(result)
