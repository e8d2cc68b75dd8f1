"""An API-server double: the Kubernetes REST wire protocol over real HTTP, backed by memory.

A test fixture (no real API server can run on the development machines), faithful enough for the real
``kubectl`` and for kubernetes-asyncio: discovery (``/api``, ``/apis``, group-version resource lists),
``/openapi/v3`` (so kubectl sends ``fieldValidation`` instead of validating locally), list with
``resourceVersion``, ``limit`` and ``continue``, watch as a chunked stream of JSON events with
``BOOKMARK``s, ``410 Gone`` for a compacted resourceVersion, create / update / patch (merge, strategic
merge, JSON patch, server-side apply) / delete with optimistic concurrency (``409``; a delete's
``preconditions``), finalizers and ``deletionTimestamp``, the ``status`` subresource, ``meta.k8s.io``
Tables (what ``kubectl get`` asks for), Leases and CustomResourceDefinitions (a created CRD serves its
resource).

A CRD's create, update, patch or apply is refused (``422 Invalid``) for the two rules in
``k8s/crdrules.py`` a real API server applies (``properties`` beside ``additionalProperties``; a
``*.k8s.io`` group without the ``api-approved.kubernetes.io`` annotation, on an update only where the
annotation's state changes); nothing else of a CRD is validated.

What it does not do: authentication (everything is allowed unless a test calls ``forbid``), admission,
defaulting beyond metadata, schema validation (of objects; of a CRD beyond those two rules), garbage
collection by owner, real scheduling. A pod gets an IP and a Ready condition only when a test (the
"kubelet") sets them, through ``set_pod_status`` or ``kubectl patch --subresource=status``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime as dt
import logging
import socket
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml
from aiohttp import web

from kvgate.k8s import crdrules
from kvgate.k8s import resources as R
from kvgate.k8s.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from kvgate.k8s.resources import ResourceType
from kvgate.k8s.selectors import SelectorError, field_selector, label_selector

log = logging.getLogger(__name__)

SERVER_VERSION = {
    "major": "1", "minor": "34", "gitVersion": "v1.34.0-kvgate-double", "gitCommit": "0" * 40,
    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
    "compiler": "gc", "platform": "linux/amd64",
}  # fmt: skip
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "details": self.details, "code": self.code,
        }  # fmt: skip


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{rt.plural}{"." + rt.group if rt.group else ""} "{name}" not found',
        {"name": name, "group": rt.group, "kind": rt.plural},
    )  # fmt: skip


@dataclass(slots=True)
class _Event:
    rv: int
    key: tuple[str, str]  # (group, plural)
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]


@dataclass(eq=False)
class _Watcher:
    key: tuple[str, str]
    namespace: str | None
    matches: Callable[[dict[str, Any]], bool]
    queue: asyncio.Queue[_Event | None] = field(default_factory=asyncio.Queue)
    transport: asyncio.Transport | None = None
    flowing: asyncio.Event = field(default_factory=asyncio.Event)  # cleared: held (``hold_watches``)


class ApiServerDouble:
    """``await start()``, then point any client at ``url``. Test controls: ``compact``, ``cut_watches``,
    ``forbid``, ``go_away`` / ``come_back``, ``stall`` / ``unstall``, ``hold_watches`` /
    ``release_watches``, ``freeze_cache``, ``ignore_watch_timeout``,
    ``set_pod_status`` and the Python-side ``create`` / ``get`` / ``patch`` / ``delete``."""

    def __init__(
        self,
        types: Iterable[ResourceType] = R.ALL,
        *,
        bookmark_interval: float = 1.0,
        cacher_bookmarks: bool = True,
        history: int = 10_000,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.types: dict[tuple[str, str], ResourceType] = {}
        self._versions: dict[tuple[str, str], list[ResourceType]] = {}
        for rt in types:
            self.register(rt)
        self.bookmark_interval = bookmark_interval
        # As kube-apiserver's cacher: a bookmark carries the resourceVersion of the type's last event (none
        # before its first) and reaches only a watch that started below it (``cacheWatcher.process``). So a
        # watch on a type nobody writes gets none (etcd's progress notify, which would move it, is not
        # played). False: every bookmark carries the current resourceVersion (a generous server).
        self.cacher_bookmarks = cacher_bookmarks
        self._type_rv: dict[tuple[str, str], int] = {}  # (group, plural) -> its last event's resourceVersion
        self.now = now
        self.rv = 1
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self._log: deque[_Event] = deque()
        self._history = history
        self._compacted = 0  # a watch or continue from an RV below this is 410 Gone
        self._watchers: set[_Watcher] = set()
        self._forbidden: set[tuple[str, str]] = set()
        # Set while the server answers; cleared by ``stall``: watches (and lists, if asked) send nothing.
        self._running = asyncio.Event()
        self._running.set()
        self._stall_lists = False
        self._away = False  # between ``go_away`` and ``come_back``: any request that still arrives is reset
        self._cache_frozen = False  # ``freeze_cache``
        # A server (or proxy) that does not end a watch at its timeoutSeconds.
        self.ignore_watch_timeout = False
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self.port = 0
        self.host = "127.0.0.1"
        self.requests: deque[str] = deque(maxlen=2000)  # "VERB path?query", for tests to inspect
        # Called with (event type, object) as each change is applied, before any watcher sees it: when a
        # change made through HTTP (kubectl) happened, not when its client returned.
        self.on_change: Callable[[str, dict[str, Any]], None] | None = None
        for ns in ("default", "kube-system"):
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> ApiServerDouble:
        app = web.Application(client_max_size=16 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen(host, port)
        return self

    async def _listen(self, host: str, port: int) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.host, self.port = host, sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    async def go_away(self) -> None:
        """The API server becomes unreachable, as a dead process would: it stops listening (new connections
        are refused) and every open connection, watches and idle kept-alive ones, is reset. The store is
        kept; ``come_back`` listens again on the same port. A connection accepted just before but registered
        only after the reset (its ``connection_made`` still pending in the loop) is reset at its first
        request (``_handle``): under load a client's reconnect found the double serving it again."""
        self._away = True
        self.cut_watches()
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server if self._runner is not None else None
        for handler in server.connections if server is not None else []:
            if handler.transport is not None:
                handler.transport.abort()

    async def come_back(self) -> None:
        self._away = False
        if self._site is None and self._runner is not None:
            await self._listen(self.host, self.port)

    async def stop(self) -> None:
        self.cut_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ApiServerDouble:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def kubeconfig(self, path: str, namespace: str = "default") -> str:
        """Write a kubeconfig pointing at this server (for kubectl and kubernetes-asyncio)."""
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "double",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": {"token": "double-token"}}],
            "contexts": [{"name": "double",
                          "context": {"cluster": "double", "user": "double", "namespace": namespace}}],
        }  # fmt: skip
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(cfg, f)
        return path

    # -- test controls -----------------------------------------------------------------------------

    def register(self, rt: ResourceType) -> None:
        self.types[(rt.group, rt.plural)] = rt
        versions = self._versions.setdefault((rt.group, rt.plural), [])
        if all(v.version != rt.version for v in versions):
            versions.append(rt)

    def compact(self) -> int:
        """Forget the event history: a watch (or continue token) from any older resourceVersion gets 410."""
        self._log.clear()
        self._compacted = self.rv
        return self.rv

    def cut_watches(self) -> int:
        """Drop every open watch connection abruptly (a network cut, not a clean end of stream)."""
        n = 0
        for w in list(self._watchers):
            if w.transport is not None:
                w.transport.abort()
            w.queue.put_nowait(None)
            n += 1
        return n

    def stall(self, lists: bool = False) -> None:
        """The API server is stuck with its connections open (a hung process, or a proxy holding them):
        every watch, open or new, answers 200 and then sends nothing more (no event, no bookmark, no end at
        its timeoutSeconds; TCP stays alive); with ``lists``, list requests hang too (no answer at all).
        ``unstall`` resumes them (what was held is then sent)."""
        self._running.clear()
        self._stall_lists = lists

    def unstall(self) -> None:
        self._running.set()
        self._stall_lists = False

    def hold_watches(self) -> int:
        """A proxy holds the watch connections open now (k8s17): each sends nothing more (no event, no
        bookmark, no end at its timeoutSeconds; TCP stays alive) while the server answers every new request,
        new watches included. ``release_watches`` lets them go on (what was held is then sent). How many."""
        for w in self._watchers:
            w.flowing.clear()
        return len(self._watchers)

    def release_watches(self) -> None:
        for w in self._watchers:
            w.flowing.set()

    def freeze_cache(self, frozen: bool = True) -> None:
        """The watch cache stops following storage (k8s18; its etcd watch stuck): changes are stored and
        listed (a list without resourceVersion reads etcd) but reach no watch and no watch history, and the
        cacher's bookmarks go on with the type's last resourceVersion it saw. ``freeze_cache(False)``: it
        follows again (what it missed meanwhile is not replayed)."""
        self._cache_frozen = frozen

    def forbid(self, rt: ResourceType, forbidden: bool = True) -> None:
        """Answer 403 (as RBAC would) to every request on ``rt``."""
        key = (rt.group, rt.plural)
        if forbidden:
            self._forbidden.add(key)
        else:
            self._forbidden.discard(key)

    @property
    def watch_count(self) -> int:
        return len(self._watchers)

    # -- the store ---------------------------------------------------------------------------------

    def _rt_of(self, obj: Mapping[str, Any]) -> ResourceType:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group = api_version.rpartition("/")[0]
        for rt in self.types.values():
            if rt.group == group and rt.kind == kind:
                return rt
        raise ApiError(404, "NotFound", f"no resource for {api_version} {kind}")

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], dict[str, Any]]:
        return self._objects.setdefault((rt.group, rt.plural), {})

    def _record(self, rt: ResourceType, etype: str, obj: dict[str, Any]) -> None:
        ev = _Event(self.rv, (rt.group, rt.plural), etype, copy.deepcopy(obj))
        if self.on_change is not None:
            self.on_change(etype, ev.obj)
        if self._cache_frozen:
            return
        self._log.append(ev)
        self._type_rv[ev.key] = ev.rv
        while len(self._log) > self._history:
            self._compacted = self._log.popleft().rv
        ns = obj["metadata"].get("namespace")
        for w in list(self._watchers):
            if w.key == ev.key and (w.namespace is None or w.namespace == ns) and w.matches(ev.obj):
                w.queue.put_nowait(ev)

    def _bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def _timestamp(self) -> str:
        return self.now().strftime("%Y-%m-%dT%H:%M:%SZ")

    def create(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        rt = self._rt_of(obj)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise ApiError(422, "Invalid", f"{rt.kind}: metadata.name: Required value")
        if rt.namespaced:
            meta["namespace"] = meta.get("namespace") or namespace or "default"
        else:
            meta.pop("namespace", None)
        key = (meta.get("namespace", ""), meta["name"])
        bucket = self._bucket(rt)
        if rt == R.CRD and (refused := crdrules.refusal(obj)) is not None:
            raise ApiError(422, "Invalid", *refused)  # what a real API server refuses (k8s/crdrules.py)
        if key in bucket:
            raise ApiError(
                409, "AlreadyExists", f'{rt.plural} "{meta["name"]}" already exists',
                {"name": meta["name"], "group": rt.group, "kind": rt.plural},
            )  # fmt: skip
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = self._timestamp()
        meta["generation"] = 1
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(k, None)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if rt.kind == "Pod":
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        self._bump(obj)
        bucket[key] = obj
        self._record(rt, "ADDED", obj)
        if rt == R.CRD:
            self._serve_crd(obj)
        return copy.deepcopy(obj)

    def _serve_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        for v in spec.get("versions", []):
            if v.get("served", True):
                self.register(ResourceType(
                    spec.get("group", ""), v["name"], names.get("kind", ""), names.get("plural", ""),
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    short_names=tuple(names.get("shortNames", ())),
                ))  # fmt: skip

    def get(self, rt: ResourceType, name: str, namespace: str | None = "default") -> dict[str, Any]:
        obj = self._bucket(rt).get((namespace or "" if rt.namespaced else "", name))
        if obj is None:
            raise _not_found(rt, name)
        return copy.deepcopy(obj)

    def replace(
        self, rt: ResourceType, name: str, namespace: str | None, new: dict[str, Any], *, status: bool = False
    ) -> dict[str, Any]:
        """PUT semantics: 409 on a stale ``metadata.resourceVersion``; the main resource keeps ``.status``
        and the status subresource changes only ``.status``."""
        ns = (namespace or "default") if rt.namespaced else ""
        bucket = self._bucket(rt)
        cur = bucket.get((ns, name))
        if cur is None:
            raise _not_found(rt, name)
        want_rv = (new.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != cur["metadata"]["resourceVersion"]:
            raise ApiError(
                409, "Conflict",
                f'Operation cannot be fulfilled on {rt.plural} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": name, "group": rt.group, "kind": rt.plural},
            )  # fmt: skip
        obj = copy.deepcopy(cur)
        if status:
            obj["status"] = copy.deepcopy(new.get("status", {}))
        else:
            keep = ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "generation",
                    "deletionGracePeriodSeconds")  # fmt: skip
            meta = {k: v for k, v in (new.get("metadata") or {}).items() if k not in keep}
            meta.update({k: cur["metadata"][k] for k in keep if k in cur["metadata"]})
            body = {k: copy.deepcopy(v) for k, v in new.items() if k not in ("metadata", "status")}
            if "status" not in rt.subresources and "status" in new:
                body["status"] = copy.deepcopy(new["status"])
            elif "status" in cur:
                body["status"] = cur["status"]
            body["apiVersion"], body["kind"] = rt.api_version, rt.kind
            if body.get("spec") != cur.get("spec"):
                meta["generation"] = cur["metadata"].get("generation", 1) + 1
            obj = {**body, "metadata": meta}
        if rt == R.CRD and not status and (refused := crdrules.refusal(obj, old=cur)) is not None:
            raise ApiError(422, "Invalid", *refused)  # on update too, as a real API server (k8s17)
        if obj == cur:
            return copy.deepcopy(cur)  # no-op writes do not bump the resourceVersion (as the real one)
        self._bump(obj)
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            del bucket[(ns, name)]
            self._record(rt, "DELETED", obj)
            return copy.deepcopy(obj)
        bucket[(ns, name)] = obj
        self._record(rt, "MODIFIED", obj)
        return copy.deepcopy(obj)

    def patch(
        self,
        rt: ResourceType,
        name: str,
        namespace: str | None,
        patch: Any,
        content_type: str = "application/merge-patch+json",
        *,
        status: bool = False,
    ) -> dict[str, Any]:
        cur = self.get(rt, name, namespace)
        try:
            if "json-patch" in content_type:
                new = json_patch(cur, patch)
            elif "strategic-merge-patch" in content_type:
                new = strategic_merge_patch(cur, patch)
            else:
                new = merge_patch(cur, patch)
        except PatchError as e:
            raise ApiError(422, "Invalid", str(e)) from e
        if not isinstance(new, dict):
            raise ApiError(422, "Invalid", "the patch does not produce an object")
        # A patch is not a blind write: it conflicts only when it names a resourceVersion itself.
        if not (isinstance(patch, dict) and (patch.get("metadata") or {}).get("resourceVersion")):
            new.setdefault("metadata", {})["resourceVersion"] = cur["metadata"]["resourceVersion"]
        return self.replace(rt, name, namespace, new, status=status)

    def delete(
        self,
        rt: ResourceType,
        name: str,
        namespace: str | None = "default",
        grace_seconds: int | None = None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Finalizers (or a pod's positive grace period) hold the object with a ``deletionTimestamp``.
        ``preconditions`` (DeleteOptions ``uid`` / ``resourceVersion``): 409 Conflict unless the object
        still has them, as the real API server (``storage.Preconditions.Check``)."""
        ns = (namespace or "default") if rt.namespaced else ""
        bucket = self._bucket(rt)
        cur = bucket.get((ns, name))
        if cur is None:
            raise _not_found(rt, name)
        for field_name, key in (("UID", "uid"), ("ResourceVersion", "resourceVersion")):
            want = (preconditions or {}).get(key)
            if want is not None and want != cur["metadata"].get(key):
                raise ApiError(
                    409, "Conflict",
                    f'Operation cannot be fulfilled on {rt.plural}{"." + rt.group if rt.group else ""} '
                    f'"{name}": Precondition failed: {field_name} in precondition: {want}, {field_name} in '
                    f'object meta: {cur["metadata"].get(key)}',
                    {"name": name, "group": rt.group, "kind": rt.plural},
                )  # fmt: skip
        if cur["metadata"].get("finalizers"):
            if not cur["metadata"].get("deletionTimestamp"):
                cur["metadata"]["deletionTimestamp"] = self._timestamp()
                cur["metadata"]["deletionGracePeriodSeconds"] = grace_seconds or 0
                self._bump(cur)
                self._record(rt, "MODIFIED", cur)
            return copy.deepcopy(cur)
        del bucket[(ns, name)]
        self._bump(cur)
        self._record(rt, "DELETED", cur)
        return copy.deepcopy(cur)

    def objects(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> list[dict[str, Any]]:
        lm, fm = label_selector(labels), field_selector(fields)
        out = []
        for (ns, _name), obj in sorted(self._bucket(rt).items()):
            if rt.namespaced and namespace is not None and ns != namespace:
                continue
            if lm(obj["metadata"].get("labels") or {}) and fm(obj):
                out.append(copy.deepcopy(obj))
        return out

    def set_pod_status(
        self,
        name: str,
        namespace: str = "default",
        *,
        ip: str | None = None,
        ready: bool | None = None,
        phase: str | None = None,
    ) -> dict[str, Any]:
        """The kubelet's part: podIP, phase and the Ready condition."""
        pod = self.get(R.POD, name, namespace)
        status = pod.setdefault("status", {})
        if ip is not None:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
        if phase is not None:
            status["phase"] = phase
        if ready is not None:
            status["phase"] = phase or "Running"
            conds = [c for c in status.get("conditions", []) if c.get("type") != "Ready"]
            conds.append({"type": "Ready", "status": "True" if ready else "False",
                          "lastTransitionTime": self._timestamp()})  # fmt: skip
            status["conditions"] = conds
        return self.replace(R.POD, name, namespace, pod, status=True)

    # -- HTTP --------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._away:  # (gone: a connection the reset missed gets no answer either)
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        self.requests.append(f"{request.method} {request.path_qs}")
        try:
            return await self._route(request)
        except ApiError as e:
            return _json(e.status(), e.code)
        except (SelectorError, ValueError, orjson.JSONDecodeError, yaml.YAMLError) as e:
            return _json(ApiError(400, "BadRequest", str(e)).status(), 400)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if not parts:
            return _json({"paths": ["/api", "/apis", "/version", "/openapi/v3"]})
        head = parts[0]
        if head in ("healthz", "readyz", "livez"):
            return web.Response(text="ok")
        if head == "version":
            return _json(SERVER_VERSION)
        if head == "openapi":
            return self._openapi(parts[1:])
        if head == "api":
            if len(parts) == 1:
                return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]})  # fmt: skip
            group, version, rest = "", parts[1], parts[2:]
        elif head == "apis":
            if len(parts) == 1:
                return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": self._groups()})
            if len(parts) == 2:
                groups = [g for g in self._groups() if g["name"] == parts[1]]
                if not groups:
                    raise ApiError(404, "NotFound", f"no group {parts[1]}")
                return _json({"kind": "APIGroup", "apiVersion": "v1", **groups[0]})
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return _json(self._resource_list(group, version))
        return await self._resource(request, group, version, rest)

    def _groups(self) -> list[dict[str, Any]]:
        by_group: dict[str, list[str]] = {}
        for versions in self._versions.values():
            for rt in versions:
                if rt.group and rt.version not in by_group.setdefault(rt.group, []):
                    by_group[rt.group].append(rt.version)
        out = []
        for g, vs in sorted(by_group.items()):
            gvs = [{"groupVersion": f"{g}/{v}", "version": v} for v in vs]
            out.append({"name": g, "versions": gvs, "preferredVersion": gvs[0]})
        return out

    def _served(self, group: str, version: str) -> list[ResourceType]:
        return [
            rt for vs in self._versions.values() for rt in vs if rt.group == group and rt.version == version
        ]

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        served = self._served(group, version)
        if not served:
            raise ApiError(404, "NotFound", f"no group version {group}/{version}")
        res: list[dict[str, Any]] = []
        for rt in served:
            res.append({"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                        "kind": rt.kind, "verbs": _VERBS, "shortNames": list(rt.short_names),
                        "storageVersionHash": ""})  # fmt: skip
            for sub in rt.subresources:
                res.append({"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                            "kind": rt.kind, "verbs": ["get", "patch", "update"]})  # fmt: skip
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": res}

    def _openapi(self, parts: list[str]) -> web.Response:
        """OpenAPI v3: the index and one document per group version. Each PATCH declares
        ``fieldValidation``, which is how kubectl learns to validate server-side instead of locally."""
        if parts[:1] != ["v3"]:
            raise ApiError(404, "NotFound", "only /openapi/v3 is served")
        gvs = {(rt.group, rt.version) for vs in self._versions.values() for rt in vs}
        if len(parts) == 1:
            paths = {}
            for g, v in sorted(gvs):
                p = f"apis/{g}/{v}" if g else f"api/{v}"
                paths[p] = {"serverRelativeURL": f"/openapi/v3/{p}?hash={self.rv}"}
            return _json({"paths": paths})
        rest = parts[1:]
        if rest[0] == "api" and len(rest) == 2:
            group, version = "", rest[1]
        elif rest[0] == "apis" and len(rest) == 3:
            group, version = rest[1], rest[2]
        else:
            raise ApiError(404, "NotFound", "no such OpenAPI document")
        return _json(_openapi_doc(self._served(group, version)))

    async def _resource(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, name = rest[0], (rest[1] if len(rest) > 1 else None)
        sub = rest[2] if len(rest) > 2 else None
        rt = next((r for r in self._served(group, version) if r.plural == plural), None)
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if (rt.group, rt.plural) in self._forbidden:
            user = "system:serviceaccount:default:kvgate"
            raise ApiError(
                403, "Forbidden",
                f'{rt.plural}{"." + rt.group if rt.group else ""} is forbidden: User "{user}" cannot '
                f'{request.method.lower()} resource "{rt.plural}" in API group "{rt.group}"',
                {"group": rt.group, "kind": rt.plural},
            )  # fmt: skip
        if sub is not None and sub not in rt.subresources:
            raise ApiError(404, "NotFound", f"no subresource {sub}")
        q = request.query
        method = request.method
        if self._stall_lists and method == "GET" and q.get("watch") not in ("true", "1"):
            await self._running.wait()
        if name is None:
            if method == "GET":
                if q.get("watch") in ("true", "1"):
                    return await self._watch(request, rt, namespace)
                return self._list(request, rt, namespace)
            if method == "POST":
                body = await _body(request)
                if rt.namespaced and namespace is None:
                    raise ApiError(400, "BadRequest", "a namespaced resource needs a namespace")
                self._check_kind(rt, body)
                return self._out(request, rt, self.create(body, namespace), 201)
            if method == "DELETE":
                objs = self.objects(rt, namespace, q.get("labelSelector"), q.get("fieldSelector"))
                for o in objs:
                    self.delete(rt, o["metadata"]["name"], o["metadata"].get("namespace"))
                return _json({"kind": rt.kind + "List", "apiVersion": rt.api_version,
                              "metadata": {"resourceVersion": str(self.rv)}, "items": objs})  # fmt: skip
            raise ApiError(405, "MethodNotAllowed", f"{method} on a collection")
        if method == "GET":
            return self._out(request, rt, self.get(rt, name, namespace))
        if method == "PUT":
            body = await _body(request)
            self._check_kind(rt, body)
            return self._out(request, rt, self.replace(rt, name, namespace, body, status=sub == "status"))
        if method == "PATCH":
            ctype = request.headers.get("Content-Type", "application/merge-patch+json")
            raw = await request.read()
            if "apply-patch" in ctype:
                return self._apply(request, rt, name, namespace, yaml.safe_load(raw), sub == "status")
            patch = orjson.loads(raw)
            return self._out(
                request, rt, self.patch(rt, name, namespace, patch, ctype, status=sub == "status")
            )
        if method == "DELETE":
            raw = await request.read()
            opts = orjson.loads(raw) if raw.strip() else {}
            grace = opts.get("gracePeriodSeconds", q.get("gracePeriodSeconds"))
            deleted = self.delete(
                rt, name, namespace, None if grace is None else int(grace), opts.get("preconditions")
            )
            return self._out(request, rt, deleted)
        raise ApiError(405, "MethodNotAllowed", f"{method} on an object")

    def _check_kind(self, rt: ResourceType, body: Mapping[str, Any]) -> None:
        if body.get("kind") not in (None, rt.kind):
            raise ApiError(400, "BadRequest", f"kind {body.get('kind')} does not match {rt.plural}")

    def _apply(
        self, request: web.Request, rt: ResourceType, name: str, ns: str | None, obj: Any, status: bool
    ) -> web.StreamResponse:
        """Server-side apply, approximated: create if absent, else a merge patch (no field ownership)."""
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "apply needs an object")
        try:
            cur = self.get(rt, name, ns)
        except ApiError as e:
            if e.code != 404:
                raise
            obj.setdefault("metadata", {})["name"] = name
            return self._out(request, rt, self.create(obj, ns), 201)
        obj.get("metadata", {}).pop("resourceVersion", None)
        new = merge_patch(cur, obj)
        return self._out(request, rt, self.replace(rt, name, ns, new, status=status))

    def _out(
        self, request: web.Request, rt: ResourceType, obj: dict[str, Any], code: int = 200
    ) -> web.Response:
        if _wants_table(request):
            return _json(self._table(rt, [obj], request.query.get("includeObject")), code)
        return _json(obj, code)

    def _list(self, request: web.Request, rt: ResourceType, namespace: str | None) -> web.Response:
        q = request.query
        items = self.objects(rt, namespace, q.get("labelSelector"), q.get("fieldSelector"))
        list_rv = self.rv
        start_after: str | None = None
        if q.get("continue"):
            try:
                token = orjson.loads(base64.urlsafe_b64decode(q["continue"]))
                list_rv, start_after = int(token["rv"]), str(token["start"])
            except (ValueError, KeyError, TypeError) as e:
                raise ApiError(400, "BadRequest", "invalid continue token") from e
            if list_rv < self._compacted:
                raise ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                               "consistent list result. You can start a new list without the continue "
                               "parameter.")  # fmt: skip
            items = [o for o in items if _key(o) > start_after]
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        limit = int(q.get("limit") or 0)
        if limit and len(items) > limit:
            items = items[:limit]
            token = {"rv": list_rv, "start": _key(items[-1])}
            meta["continue"] = base64.urlsafe_b64encode(orjson.dumps(token)).decode()
            meta["remainingItemCount"] = 0
        if _wants_table(request):
            table = self._table(rt, items, q.get("includeObject"))
            table["metadata"] = meta
            return _json(table)
        return _json(
            {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": items}
        )

    async def _watch(
        self, request: web.Request, rt: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        q = request.query
        lm, fm = label_selector(q.get("labelSelector")), field_selector(q.get("fieldSelector"))
        rv_text = q.get("resourceVersion") or ""
        from_rv = int(rv_text) if rv_text not in ("", "0") else None
        if from_rv is not None and from_rv < self._compacted:
            # As the real server: 200 and an ERROR event carrying a 410 Status (clients must relist).
            return await self._gone(request, from_rv)
        watcher = _Watcher(
            (rt.group, rt.plural), namespace if rt.namespaced else None,
            lambda o: lm(o["metadata"].get("labels") or {}) and fm(o),
        )  # fmt: skip
        watcher.flowing.set()
        # Register and collect the backlog with no await in between: no event can fall in the gap.
        self._watchers.add(watcher)
        if from_rv is None:
            backlog = [_Event(self.rv, watcher.key, "ADDED", o) for o in self.objects(
                rt, namespace, q.get("labelSelector"), q.get("fieldSelector"))]  # fmt: skip
        else:
            backlog = [
                e for e in self._log if e.rv > from_rv and e.key == watcher.key
                and (watcher.namespace is None or e.obj["metadata"].get("namespace") == watcher.namespace)
                and watcher.matches(e.obj)
            ]  # fmt: skip
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        start_rv = self.rv if from_rv is None else from_rv
        timeout = float(q.get("timeoutSeconds") or 1800)
        table = _wants_table(request)
        include = q.get("includeObject")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            watcher.transport = request.transport
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            for ev in backlog:
                await self._write(resp, self._event_bytes(rt, ev.type, ev.obj, table, include), watcher)
            while True:
                left = deadline - loop.time()
                if left <= 0 and not self.ignore_watch_timeout:
                    break
                wait = self.bookmark_interval if left <= 0 else min(left, self.bookmark_interval)
                try:  # (not wait_for, which may swallow the handler's cancellation: kvgate.k8s.tasks)
                    async with asyncio.timeout(wait):
                        ev2 = await watcher.queue.get()
                except TimeoutError:  # a bookmark is due (not at the deadline: that ends the watch)
                    mark_rv = self._type_rv.get(watcher.key, 0) if self.cacher_bookmarks else self.rv
                    if (bookmarks and not table and wait == self.bookmark_interval
                            and (mark_rv > start_rv or not self.cacher_bookmarks)):  # fmt: skip
                        mark = {"kind": rt.kind, "apiVersion": rt.api_version,
                                "metadata": {"resourceVersion": str(mark_rv)}}  # fmt: skip
                        event = orjson.dumps({"type": "BOOKMARK", "object": mark}) + b"\n"
                        await self._write(resp, event, watcher)
                    continue
                if ev2 is None:
                    break
                await self._write(resp, self._event_bytes(rt, ev2.type, ev2.obj, table, include), watcher)
            await self._running.wait()  # a stalled server does not end the stream either
            await watcher.flowing.wait()  # (nor a proxy holding it)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            self._watchers.discard(watcher)
        return resp

    async def _write(self, resp: web.StreamResponse, data: bytes, watcher: _Watcher | None = None) -> None:
        await self._running.wait()  # stalled: held (the connection stays open, nothing is sent)
        if watcher is not None:
            await watcher.flowing.wait()  # held by a proxy (``hold_watches``)
        await resp.write(data)

    async def _gone(self, request: web.Request, from_rv: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        status = ApiError(410, "Expired", f"too old resource version: {from_rv} ({self._compacted})").status()
        with contextlib.suppress(ConnectionResetError):
            await resp.write(orjson.dumps({"type": "ERROR", "object": status}) + b"\n")
            await resp.write_eof()
        return resp

    def _event_bytes(
        self, rt: ResourceType, etype: str, obj: dict[str, Any], table: bool, include: str | None
    ) -> bytes:
        payload = self._table(rt, [obj], include) if table else obj
        return orjson.dumps({"type": etype, "object": payload}) + b"\n"

    def _table(self, rt: ResourceType, objs: list[dict[str, Any]], include: str | None) -> dict[str, Any]:
        cols = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
        if rt == R.POD:
            cols += [
                {
                    "name": "Ready",
                    "type": "string",
                    "format": "",
                    "description": "ready/total",
                    "priority": 0,
                },
                {"name": "Status", "type": "string", "format": "", "description": "phase", "priority": 0},
                {
                    "name": "Restarts",
                    "type": "string",
                    "format": "",
                    "description": "restarts",
                    "priority": 0,
                },
            ]
        cols.append({"name": "Age", "type": "string", "format": "", "description": "age", "priority": 0})
        if rt == R.POD:
            cols.append(
                {"name": "IP", "type": "string", "format": "", "description": "pod IP", "priority": 1}
            )
        rows = []
        for o in objs:
            cells: list[Any] = [o["metadata"]["name"]]
            if rt == R.POD:
                cells += _pod_cells(o)
            cells.append(self._age(o["metadata"].get("creationTimestamp")))
            if rt == R.POD:
                cells.append((o.get("status") or {}).get("podIP") or "<none>")
            row: dict[str, Any] = {"cells": cells}
            if include == "Object":
                row["object"] = o
            elif include != "None":
                row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                 "metadata": o["metadata"]}  # fmt: skip
            rows.append(row)
        meta = {"resourceVersion": str(self.rv)}
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                "columnDefinitions": cols, "rows": rows}  # fmt: skip

    def _age(self, created: str | None) -> str:
        if not created:
            return "<unknown>"
        then = dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        s = max(0, int((self.now() - then).total_seconds()))
        return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _pod_cells(pod: Mapping[str, Any]) -> list[Any]:
    status = pod.get("status") or {}
    total = len((pod.get("spec") or {}).get("containers") or [None])
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    phase = "Terminating" if pod["metadata"].get("deletionTimestamp") else status.get("phase", "Pending")
    return [f"{total if ready else 0}/{total}", phase, "0"]


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    ctype = request.headers.get("Content-Type", "application/json")
    body = yaml.safe_load(raw) if "yaml" in ctype else orjson.loads(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the body must be an object")
    return body


def _json(obj: Any, code: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=code, content_type="application/json")


def _openapi_doc(served: list[ResourceType]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rt in served:
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        ref_name = _schema_name(rt)
        schemas[ref_name] = {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-group-version-kind": [gvk],
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                           "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }  # fmt: skip
        params = [{"name": n, "in": "query", "schema": {"type": "string"}}
                  for n in ("dryRun", "fieldManager", "fieldValidation")]  # fmt: skip
        op = {"x-kubernetes-group-version-kind": gvk, "parameters": params,
              "responses": {"200": {"description": "OK"}}}  # fmt: skip
        base = rt.collection_path("{namespace}" if rt.namespaced else None)
        paths[base] = {"get": {**op, "x-kubernetes-action": "list"},
                       "post": {**op, "x-kubernetes-action": "post"}}  # fmt: skip
        paths[base + "/{name}"] = {
            verb: {**op, "x-kubernetes-action": action}
            for verb, action in (("get", "get"), ("put", "put"), ("patch", "patch"), ("delete", "delete"))
        }
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": paths, "components": {"schemas": schemas}}  # fmt: skip


def _schema_name(rt: ResourceType) -> str:
    if not rt.group:
        return f"io.k8s.api.core.{rt.version}.{rt.kind}"
    return ".".join(reversed(rt.group.split("."))) + f".{rt.version}.{rt.kind}"


async def serve_forever(host: str = "127.0.0.1", port: int = 0) -> None:
    """``kvgate k8s-double``: run the double until interrupted (for trying kubectl by hand)."""
    double = await ApiServerDouble().start(host, port)
    print(f"kvgate k8s-double ready {double.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await double.stop()
