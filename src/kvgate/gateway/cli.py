"""``kvgate serve``: run the OpenAI-compatible gateway (from flags, or ``--config gw.yaml``)."""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import logging
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kvgate.aio import serve_on_sighup
from kvgate.config.gateway import (
    ENGINES,
    MAX_WORKERS,
    POLICIES,
    GatewayConfig,
    GatewayConfigError,
    ListenerTLS,
    budget_below_body,
    check_events_bind,
    config_from_flags,
    group_not_the_files,
    load_gateway_config,
    min_ready_workers,
    parse_gateway_config,
    worker_timeout,
)
from kvgate.entry import ArgumentParser, log_level, number, port_number, sighup_ignored
from kvgate.gateway.pools import Pool, build_pool
from kvgate.k8s import poolflags
from kvgate.multicluster.policies import POLICIES as CLUSTER_POLICIES
from kvgate.openai.labels import GRACE_S
from kvgate.openai.protocol import DEFAULT_SESSION_HEADER
from kvgate.scheduling import tokenize
from kvgate.stderrlog import off_loop_stderr, say

if TYPE_CHECKING:
    from kvgate.gateway.reload import FileStamp


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="kvgate serve",
        description="OpenAI-compatible gateway in front of model "
        "servers, picking an endpoint per request (load-, KV-, prefix- and LoRA-aware).",
    )
    p.add_argument("--config", help="gateway YAML (pools, models, objectives, rewrites, limits)")
    p.add_argument(
        "--endpoints", help="comma-separated model servers, e.g. http://127.0.0.1:8001,127.0.0.1:8002"
    )
    p.add_argument("--model", action="append", default=[], help="model name the endpoints serve (repeatable)")
    p.add_argument("--adapter", action="append", default=[], help="LoRA adapter name the endpoints serve")
    p.add_argument(
        "--engine", default="vllm", choices=ENGINES, help="the model servers' engine (metric names)"
    )
    p.add_argument("--policy", default="kvgate", choices=POLICIES)
    p.add_argument(
        "--kv-events",
        default="auto",
        choices=("auto", "off"),
        help="auto: pools on the kvgate policy route on the engines' KV events when every endpoint "
        "publishes them (asked at start-up); off: the approximate prefix index",
    )
    p.add_argument(
        "--session-header", default=None, help=f"session-affinity header (default {DEFAULT_SESSION_HEADER})"
    )
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=None, help="listen port (default 8080)")
    p.add_argument(
        "--admin-port", type=port_number, default=None, help="port for /metrics, /healthz, /readyz, /debug"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="gateway processes sharing the port (default 1); picker state is per worker",
    )
    p.add_argument(
        "--max-buffered-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="request bodies each gateway process holds at once, all connections together (arriving, "
        "queued, being answered); a body over it gets 503 with Retry-After; at least limits.maxBodyBytes "
        "(overrides limits.maxBufferedBytes; default 1073741824, 1 GiB; per worker with --workers)",
    )
    p.add_argument(
        "--max-waiting-bytes-per-client",
        type=int,
        default=None,
        metavar="BYTES",
        help="one client's (peer host's) big request bodies waiting to be parsed, at most, once those of "
        "all clients hold over half of --max-buffered-bytes: a body past it gets 429 with Retry-After, "
        "so one client cannot fill --max-buffered-bytes (overrides limits.maxWaitingBytesPerClient; "
        "default 0: a quarter of --max-buffered-bytes; >= --max-buffered-bytes: off; with --clusters, "
        "over the clusters file's)",
    )
    p.add_argument(
        "--response-turns",
        type=int,
        default=None,
        metavar="N",
        help="finished Responses API turns each gateway process keeps, so a follow-up "
        "(previous_response_id) is estimated and prefix-scored as the whole conversation, not its new "
        "input alone (about 2.3 KB each at most; 0: none; overrides limits.responseTurns; default 10000)",
    )
    p.add_argument(
        "--min-ready-workers",
        type=int,
        default=None,
        help="with --workers: the admin port's /readyz is 200 while at least this many workers are ready "
        "(default 1: a restarting worker does not take the others out of rotation; N: only at full capacity)",
    )
    p.add_argument(
        "--worker-timeout",
        type=number,
        default=None,
        metavar="SECONDS",
        help="with --workers: a worker whose event loop sent no heartbeat for this long (wedged: a blocked "
        "loop, a stopped process) is killed and restarted (overrides listen.workerTimeoutSeconds; "
        "default 10; 0: never; else 2..3600)",
    )
    p.add_argument(
        "--clusters", help="clusters file: run as the global multi-cluster gateway (docs/multicluster.md)"
    )
    p.add_argument(
        "--cluster-policy",
        default=None,
        choices=CLUSTER_POLICIES,
        help="with --clusters: how clusters are chosen (default kvgate)",
    )
    p.add_argument(
        "--cluster-policy-seed",
        type=int,
        default=None,
        help="with --clusters: seed of the kvgate cluster policy's random picks (power of two among the "
        "best); default: drawn from os.urandom at start (printed), so gateway replicas do not pick alike",
    )
    p.add_argument(
        "--model-series-grace",
        type=number,
        default=None,
        metavar="SECONDS",
        help="with --clusters: a model name neither listed by a cluster, answered nor used this long loses "
        'its metric series (docs/multicluster.md "Commands"); without --clusters, for a pool with an '
        "inferencePool: a name its InferenceModelRewrites made a label loses its series this long after "
        "it stopped being one and was last used (the config's names never do; refused without such a "
        f"pool: docs/gateway.md); > 0, default {GRACE_S:g}; inf: never for being unused",
    )
    adm = p.add_argument_group("admin-port TLS (as kvgate epp --metrics-tls)")
    adm.add_argument(
        "--admin-tls",
        action="store_true",
        help="serve the admin port (/metrics, /healthz, /readyz, /v1/pool/aggregate, /debug) over HTTPS; "
        "needs --admin-port",
    )
    adm.add_argument("--cert-path", help="directory with tls.crt and tls.key (a Kubernetes TLS Secret)")
    adm.add_argument("--cert", help="server certificate PEM")
    adm.add_argument("--key", help="server private key PEM")
    adm.add_argument("--client-ca", help="require client certificates signed by this CA (mutual TLS)")
    adm.add_argument(
        "--tls-hosts",
        help="names/IPs for the generated self-signed certificate (without --cert-path / --cert; "
        "default localhost,127.0.0.1)",
    )
    kube = p.add_argument_group("kubernetes (endpoints from an InferencePool)")
    kube.add_argument("--pool-name", help="InferencePool to discover the endpoints from (with --model)")
    kube.add_argument(
        "--pool-namespace",
        default=None,
        help="with --pool-name: the InferencePool's namespace (default: $NAMESPACE, else default: the "
        "reference EPP's order, as kvgate epp)",
    )
    kube.add_argument(
        poolflags.GROUP_FLAG,
        choices=poolflags.GROUPS,
        default=None,
        help=poolflags.GROUP_HELP + "; with --config: of every pool's inferencePool (kvgate epp's too)",
    )
    kube.add_argument("--kube-server", help="API server URL (default: in-cluster, else the kubeconfig's)")
    kube.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG, ~/.kube/config)"
    )
    kube.add_argument(
        "--kube-stale-after",
        type=float,
        default=None,
        help="seconds out of sync with the API server after which a watched resource is logged as "
        "stale (default 120, or the config file's kubernetes.staleAfterSeconds; the gateway keeps "
        "routing on its last list; with --clusters: each member's InferencePool watch)",
    )
    kube.add_argument(
        "--kube-stale-not-ready-after",
        type=float,
        default=None,
        help="/readyz fails once an InferencePool's or its pods' copy is this many seconds old (0, the "
        "default: never, or the config file's kubernetes.staleNotReadyAfterSeconds; else at least "
        "--kube-stale-after)",
    )
    p.add_argument("--log-level", type=log_level, default="INFO")
    on_off = p.add_mutually_exclusive_group()
    on_off.add_argument(
        "--access-log",
        action="store_true",
        help="one line per finished request (kvgate.access at INFO; else the config file's accessLog, "
        'default off: docs/gateway.md "Access log")',
    )
    on_off.add_argument(
        "--no-access-log",
        action="store_true",
        help="no access line per request (over the config file's accessLog: true)",
    )
    p.add_argument(
        "--access-log-file",
        metavar="PATH",
        help="append the access lines to PATH (default: stderr; turns the log on unless --no-access-log); "
        'written about once a second and at stop (docs/gateway.md "Access log")',
    )
    return p


# Why ``--pool-name`` is refused with ``--config``: kvgate epp's ``--pool-name`` there picks the one pool it
# serves and overrides nothing in the file (its --pool-namespace must be the file's); kvgate serve serves
# every pool of its file, so there is nothing to pick.
POOL_NAME_WITH_CONFIG = (
    "not with --config: drop --pool-name (kvgate serve serves every pool of the file, each watching the "
    "InferencePool its inferencePool: {name, namespace} names; kvgate epp's --pool-name picks the one pool "
    "it serves from a file, kvgate serve has none to pick)"
)
NONE_WATCHED = poolflags.NONE_WATCHED  # (the kube flags given where no pool is watched; kvgate epp's words)


def pool_group_check(args: argparse.Namespace, cfg: GatewayConfig) -> None:
    """A pool's own ``inferencePool.group``: ``--pool-group`` may not name another (at start and reload)."""
    for pc in cfg.pools:
        if pc.inference_pool and (why := group_not_the_files(args.pool_group, pc.name, pc.inference_pool)):
            raise GatewayConfigError(poolflags.GROUP_FLAG, why)


def build_config(args: argparse.Namespace, file_cfg: GatewayConfig | None = None) -> GatewayConfig:
    """``file_cfg``: ``--config`` already loaded (a copy is used: the flags change the running config)."""
    if args.config:
        if args.endpoints or args.model:
            raise GatewayConfigError("--config", "give either --config or --endpoints/--model, not both")
        if args.pool_name:  # (it was ignored, silently: s27's closing note)
            raise GatewayConfigError("--pool-name", POOL_NAME_WITH_CONFIG)
        cfg = load_gateway_config(args.config) if file_cfg is None else copy.deepcopy(file_cfg)
    elif args.pool_name:
        if args.endpoints:
            raise GatewayConfigError("--pool-name", "give either --pool-name or --endpoints, not both")
        if not args.model:
            raise GatewayConfigError("--model", "required with --pool-name")
        pool = {"name": args.pool_name, "engine": args.engine, "policy": args.policy, "models": args.model,
                "adapters": args.adapter,
                "inferencePool": {"name": args.pool_name,
                                  "namespace": poolflags.pool_namespace(args.pool_namespace)}}  # fmt: skip
        cfg = parse_gateway_config({"pools": [pool]})
    else:
        if not args.endpoints:
            raise GatewayConfigError("--endpoints", "required without --config or --pool-name")
        if not args.model:
            raise GatewayConfigError("--model", "required without --config")
        cfg = config_from_flags(args.endpoints, args.model, args.policy, args.engine, args.adapter)
    if args.session_header:
        cfg.session_header = args.session_header.lower()
    cfg.kube_server, cfg.kubeconfig = args.kube_server, args.kubeconfig
    watched = any(pool.inference_pool is not None for pool in cfg.pools)
    watch_flags_check(args, watched)
    cfg.kube_pool_group = args.pool_group
    pool_group_check(args, cfg)
    staleness_settings(args, cfg, None if watched else "static")
    cfg.model_series_grace_s = series_grace(args.model_series_grace, watched)
    if args.access_log or args.no_access_log:
        cfg.access_log = bool(args.access_log)
    if args.access_log_file:
        cfg.access_log_file = args.access_log_file
        # (alone it turns the log on: "append the lines to PATH" read so; review s24-rev-fix24b F3)
        cfg.access_log = not args.no_access_log
        if cfg.access_log:
            access_file_check(args.access_log_file)
    if args.host is not None:
        cfg.host = args.host
    if args.port is not None:
        cfg.port = args.port
    if args.admin_port is not None:
        cfg.admin_port = args.admin_port
    if args.max_buffered_bytes is not None:
        if args.max_buffered_bytes <= 0:
            raise GatewayConfigError("--max-buffered-bytes", f"must be > 0, got {args.max_buffered_bytes}")
        flag_budget(args, cfg)
    if args.max_waiting_bytes_per_client is not None:
        if args.max_waiting_bytes_per_client < 0:
            raise GatewayConfigError(
                "--max-waiting-bytes-per-client", f"must be >= 0, got {args.max_waiting_bytes_per_client}"
            )
        cfg.limits.max_waiting_bytes_per_client = args.max_waiting_bytes_per_client
    if args.response_turns is not None:
        if args.response_turns < 0:
            raise GatewayConfigError("--response-turns", f"must be >= 0, got {args.response_turns}")
        cfg.limits.response_turns = args.response_turns
    cfg.admin_tls = admin_tls(args, cfg)
    cfg.workers, cfg.min_ready_workers = final_workers(cfg, args)
    if args.worker_timeout is not None:
        if cfg.workers == 1:
            raise GatewayConfigError("--worker-timeout", "only with --workers above 1 (no supervisor)")
        cfg.worker_timeout_s = worker_timeout(args.worker_timeout, "--worker-timeout")
    return cfg


def watch_flags_check(args: argparse.Namespace, watched: bool) -> None:
    """``--pool-group``, ``--kube-server``, ``--kubeconfig``: refused where no pool is ``watched`` (an
    InferencePool), as kvgate epp refuses them, at the start and on a reload (``reload_loader``)."""
    if watched:
        return
    given = ((poolflags.GROUP_FLAG, args.pool_group), ("--kube-server", args.kube_server),
             ("--kubeconfig", args.kubeconfig))  # fmt: skip
    for flag, value in given:
        if value:
            raise GatewayConfigError(flag, NONE_WATCHED)


def flag_budget(args: argparse.Namespace, cfg: GatewayConfig) -> None:
    """``--max-buffered-bytes`` over the config's ``limits.maxBufferedBytes``; below the config's
    ``limits.maxBodyBytes`` it is refused (s17-qafix-bc L1: such a body gets a 503 "retry" forever)."""
    cfg.limits.max_buffered_bytes = args.max_buffered_bytes
    if args.max_buffered_bytes < cfg.limits.max_body_bytes:
        raise GatewayConfigError("--max-buffered-bytes", budget_below_body(cfg.limits))


def series_grace(grace: float | None, watched: bool) -> float | None:
    """``--model-series-grace`` without ``--clusters``: how long a model name no label any more keeps its
    series (``ModelLabels.grace_s``; None: ``GRACE_S``). Only names a pool's InferenceModelRewrites made
    labels ever lose their series here (the config's names never do; a rewrite rule without ``matches``
    counts other names as ``other``), so it is refused where no pool has an ``inferencePool``: it would
    change nothing (not silently ignored: review s15-labels)."""
    if grace is None:
        return None
    if not grace > 0:
        raise GatewayConfigError("--model-series-grace", "must be > 0")
    if not watched:
        raise GatewayConfigError(
            "--model-series-grace",
            "needs --clusters or a pool with an inferencePool: only the names a pool's "
            "InferenceModelRewrites route lose their series in kvgate serve (the config's names never do: "
            "docs/gateway.md)",
        )
    return grace


def staleness_settings(args: argparse.Namespace, cfg: GatewayConfig | None, unused: str | None) -> None:
    """The two staleness settings: the config file's (``kubernetes.staleAfterSeconds``,
    ``kubernetes.staleNotReadyAfterSeconds``; ``cfg``, None: no file), each overridden by its flag when
    given, checked as ``kvgate epp`` checks its flags (kvgate.k8s.stalepolicy), the error naming the flag
    or key the value came from, and set in ``cfg``; ``unused`` "static": no InferencePool is watched, and
    any value given is refused; "hub" (``--clusters``): the not-ready limit is refused
    (``stalepolicy.check_flags``)."""
    from kvgate.k8s.stalepolicy import StalenessFlagError, file_and_flags

    try:
        stale, not_ready = file_and_flags(
            args.kube_stale_after, args.kube_stale_not_ready_after,
            cfg.kube_stale_after_s if cfg is not None else None,
            cfg.kube_stale_not_ready_after_s if cfg is not None else 0.0, unused,
        )  # fmt: skip
    except StalenessFlagError as e:
        raise GatewayConfigError(e.flag, e.message) from e
    if cfg is not None:
        cfg.kube_stale_after_s, cfg.kube_stale_not_ready_after_s = stale, not_ready


def access_file_check(path: str) -> None:
    """``--access-log-file`` opened for appending once here: a bad path is one named error before the
    gateway (or any ``--workers`` worker) starts (review s24-rev-fix24b F3)."""
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise GatewayConfigError("--access-log-file", f"cannot append to {path!r}: {e}") from None


def final_workers(cfg: GatewayConfig, args: argparse.Namespace) -> tuple[int, int]:
    """The worker count and minimum of ready workers, flags applied to ``cfg`` (the file's), checked
    together: ``GatewayConfigError`` where a start would refuse them."""
    workers = cfg.workers
    if args.workers is not None:
        if not 1 <= args.workers <= MAX_WORKERS:
            raise GatewayConfigError("--workers", f"must be in 1..{MAX_WORKERS}, got {args.workers}")
        workers = args.workers
    least, key = args.min_ready_workers, "--min-ready-workers"
    if least is None:  # the file's, checked again: --workers may have lowered the count
        least, key = cfg.min_ready_workers, "listen.minReadyWorkers"
    least = min_ready_workers(least, workers, key)
    admin_port = cfg.admin_port if args.admin_port is None else args.admin_port
    if least > 1 and admin_port is None:
        # Without an admin port the supervisor serves none: /readyz on the data port is each worker's own,
        # which no minimum of ready workers can govern (it would be silently ignored).
        raise GatewayConfigError(key, "needs an admin port (listen.adminPort / --admin-port)")
    check_events_bind(cfg, workers)  # (at the start and at each reload: the supervisor's load)
    return workers, least


def reload_loader(args: argparse.Namespace) -> Callable[[str], GatewayConfig]:
    """A reload's read of ``--config``: the file, refused (the running config kept) where the next
    restart would refuse it with these flags (``listen.minReadyWorkers`` above the final worker count,
    ``kubernetes.*`` staleness values ``staleness_settings`` refuses, no ``inferencePool`` left for
    ``--pool-group`` / ``--kube-server`` / ``--kubeconfig``, a pool's ``inferencePool.group`` other than
    ``--pool-group``), not accepted as "restart to apply" and found
    out at that restart (a pod that crash-loops at its next restart: review s28-rev-k8s28 F2)."""

    def load(path: str) -> GatewayConfig:
        cfg = load_gateway_config(path)
        final_workers(cfg, args)
        watched = any(pool.inference_pool is not None for pool in cfg.pools)
        watch_flags_check(args, watched)
        pool_group_check(args, cfg)
        staleness_settings(args, copy.deepcopy(cfg), None if watched else "static")  # (a copy: checked only)
        if args.max_buffered_bytes is not None:  # the flag stays over the file's limits.maxBufferedBytes
            flag_budget(args, cfg)
        if args.response_turns is not None:  # so does --response-turns over limits.responseTurns
            cfg.limits.response_turns = args.response_turns
        if args.max_waiting_bytes_per_client is not None:  # (and this one over its key)
            cfg.limits.max_waiting_bytes_per_client = args.max_waiting_bytes_per_client
        return cfg

    return load


def admin_tls(args: argparse.Namespace, cfg: GatewayConfig) -> ListenerTLS | None:
    """``--admin-tls`` with ``--cert-path`` / ``--cert --key`` (else a generated self-signed pair) and
    ``--client-ca`` for mutual TLS; the TLS flags without ``--admin-tls`` are an error, not ignored."""
    from kvgate.httpfront import tls

    given = [f for f, v in (("--cert-path", args.cert_path), ("--cert", args.cert), ("--key", args.key),
                            ("--client-ca", args.client_ca), ("--tls-hosts", args.tls_hosts))
             if v]  # fmt: skip
    if not args.admin_tls:
        if given:
            raise GatewayConfigError(given[0], "only with --admin-tls (TLS is for the admin port)")
        return None
    if cfg.admin_port is None:
        raise GatewayConfigError(
            "--admin-tls", "needs --admin-port (without it the admin routes share the plaintext data port)"
        )
    try:
        if args.cert_path or args.cert or args.key:
            pair = tls.load(args.cert_path, args.cert, args.key)
        else:
            names = args.tls_hosts or "localhost,127.0.0.1"
            hosts = tuple(h.strip() for h in names.split(",") if h.strip())
            pair = tls.self_signed(hosts or ("localhost",))
            logging.getLogger("kvgate.gateway").info(
                "admin TLS with a generated self-signed certificate (pass --cert-path for a real one)"
            )
        client_ca = Path(args.client_ca).read_bytes() if args.client_ca else None
    except (OSError, ValueError) as e:
        raise GatewayConfigError(given[0] if given else "--admin-tls", str(e)) from e
    return ListenerTLS(pair.cert_pem, pair.key_pem, client_ca)


def _raise_nofile() -> None:
    # Every client stream holds two sockets (client + upstream): lift the soft fd limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def build_pools(cfg: GatewayConfig, announce: bool = True, preload: bool = True) -> list[Pool]:
    """Each pool's picker, with picker-config errors reported against the pool that holds them.
    ``announce``: log the picker configs' warnings (a ``--workers`` worker does not: the supervisor did).
    ``preload``: the pools' listed models' tokenizers for pickers that read ``tokenizer: auto`` are looked
    up and loaded now, before the server says ready (``tokenize.preload``); not in a ``--workers``
    supervisor, which serves no request."""
    pools = [build_pool(pc, index=i, announce=announce) for i, pc in enumerate(cfg.pools)]
    for p in pools if preload else ():
        tokenize.preload_for(p.director, p.cfg.models)
    return pools


def tune_gc() -> None:
    """Fewer, cheaper garbage collections on the data path.

    Objects alive at start-up (config, pickers, imported modules) are frozen out of every collection,
    and the youngest generation is collected every 20,000 allocations instead of 700: by then most
    request objects have been freed by reference counting, so a collection scans only the few that
    are still alive (about 2.6% of the gateway's CPU per request went to collections before).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def serve(
    cfg: GatewayConfig,
    pools: list[Pool],
    config_path: str | None = None,
    file_cfg: GatewayConfig | None = None,
    stamp: FileStamp | None = None,
    load: Callable[[str], GatewayConfig] = load_gateway_config,
) -> None:
    from kvgate.gateway.reload import start_reloader
    from kvgate.gateway.server import GatewayServer

    # The data port listens only once started (KV-event catch-up, warm-up), as a --workers worker's does.
    server = GatewayServer(cfg, pools, listen_when_ready=True)
    if not config_path:  # (before the ports open: with --config, the reloader's handler reloads the file)
        serve_on_sighup(
            asyncio.get_running_loop(), logging.getLogger("kvgate.gateway"), "kvgate serve without --config"
        )
    try:
        await server.start()
    except OSError as e:  # a port taken: at its bind, or (the data port) found not listening at the end
        await server.stop(drain_timeout=0)
        print(f"kvgate serve: cannot start: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    reloader: asyncio.Task[None] | None = None
    if config_path:  # endpoints, limits and pickers follow the file: on SIGHUP, and when it changes
        reloader = start_reloader(
            config_path, cfg, pools, server.apply_limits, file_cfg=file_cfg, stamp=stamp, load=load,
            server=server,
        )  # fmt: skip
    tune_gc()
    say(
        f"kvgate serve: listening on http://{cfg.host}:{server.port}"
        + (
            f", admin on {_admin_scheme(cfg)}://{cfg.host}:{server.admin_port}"
            if server.admin_port is not None
            else ""
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    say("kvgate serve: draining")
    if reloader is not None:
        reloader.cancel()
    await server.stop()


def _admin_scheme(cfg: GatewayConfig) -> str:
    return "http" if cfg.admin_tls is None else "https"


# ``--clusters`` (the global gateway): the flags it takes besides its own (``--cluster-policy``, ...).
# Every other flag is for a gateway in front of model servers and is refused, not ignored (review s17-qa M2).
_CLUSTERS_FLAGS = frozenset(
    {"clusters", "cluster_policy", "cluster_policy_seed", "model_series_grace", "host", "port", "admin_port",
     "admin_tls", "cert_path", "cert", "key", "client_ca", "tls_hosts", "kube_stale_after",
     "kube_stale_not_ready_after", "config", "log_level", "max_waiting_bytes_per_client"}
)  # fmt: skip


def given_flags(argv: list[str] | None) -> list[str]:
    """The options given on the command line (a default given explicitly included), as flags."""
    p = _parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    given = vars(p.parse_args(argv))
    return [a.option_strings[-1] for a in p._actions if a.dest in given and a.option_strings]


# Why ``kvgate serve --clusters`` refuses a flag: most configure pools of endpoints, which that door has
# none of; the access log's flags another reason (qa34b-F2: they were refused as pool flags).
_CANDIDATES = "the global gateway's candidates are the clusters file's clusters"
_NO_ACCESS_LOG = (
    "the global gateway writes no access log: each answer's x-kvgate-cluster and x-kvgate-route-mode "
    "headers name where it went, kvgate_multicluster_requests_total and "
    "kvgate_multicluster_attempts_failed_total count it, and a cluster that keeps failing is logged (WARNING)"
)
_CLUSTERS_WHY = {"--access-log": _NO_ACCESS_LOG, "--no-access-log": _NO_ACCESS_LOG,
                 "--access-log-file": _NO_ACCESS_LOG}  # fmt: skip


def clusters_refused(argv: list[str] | None) -> str | None:
    """The first flag given that ``kvgate serve --clusters`` does not take, else None."""
    p = _parser()
    dests = {a.option_strings[-1]: a.dest for a in p._actions if a.option_strings}
    return next((f for f in given_flags(argv) if dests[f] not in _CLUSTERS_FLAGS), None)


def main(argv: list[str] | None = None) -> int:
    # Until each door's handler is in (with --config, a reload's SIGHUP before the reloader is up: start-up
    # probes KV events, loads tokenizers; --clusters looks at its file at once; else one line,
    # ``serve_on_sighup``).
    with sighup_ignored():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    off_loop_stderr()  # (log lines written off the event loop: a stuck stderr stalls no request)
    if args.clusters:  # the global gateway: clusters are the candidates (kvgate.multicluster)
        from kvgate.multicluster.serve import ServeArgs, run

        try:
            if args.max_buffered_bytes is not None:  # (not silently ignored)
                raise GatewayConfigError(
                    "--max-buffered-bytes",
                    "not with --clusters: set limits.maxBufferedBytes in the clusters file",
                )
            share = args.max_waiting_bytes_per_client  # (over the clusters file's maxWaitingBytesPerClient)
            if share is not None and share < 0:
                raise GatewayConfigError("--max-waiting-bytes-per-client", f"must be >= 0, got {share}")
            if args.config:  # the clusters file is the whole configuration (review s16-k8s F6)
                from kvgate.multicluster.clusters import NOT_WITH_CONFIG

                raise GatewayConfigError("--config", NOT_WITH_CONFIG)
            if (flag := clusters_refused(argv)) is not None:
                reason = _CLUSTERS_WHY.get(flag, _CANDIDATES)
                raise GatewayConfigError(
                    flag, f"not with --clusters ({reason}; it takes --host, --port, --admin-port with its "
                    "TLS flags, --cluster-policy, --cluster-policy-seed, --model-series-grace, "
                    "--kube-stale-after and --max-waiting-bytes-per-client)",
                )  # fmt: skip
            staleness_settings(args, None, "hub")
            grace = GRACE_S if args.model_series_grace is None else args.model_series_grace
            if not grace > 0:
                raise GatewayConfigError("--model-series-grace", "must be > 0")
            # The admin port: /metrics, /healthz, /readyz and /v1/clusters move there (HTTPS with
            # --admin-tls, client certificates with --client-ca), as kvgate serve's admin routes.
            admin = GatewayConfig(pools=[], admin_port=args.admin_port)
            admin.admin_tls = admin_tls(args, admin)
        except GatewayConfigError as e:
            print(f"kvgate serve: config error: {e}", file=sys.stderr)
            return 2
        from kvgate.gateway.server import admin_ssl

        port = 8080 if args.port is None else args.port  # --port 0: an ephemeral port (printed)
        return run(ServeArgs(args.clusters, args.cluster_policy or "kvgate", args.host or "127.0.0.1", port,
                             seed=args.cluster_policy_seed, series_grace_s=grace,
                             stale_after_s=args.kube_stale_after, admin_port=args.admin_port,
                             admin_ssl=admin_ssl(admin), waiting_share=share))  # fmt: skip
    file_cfg = stamp = None
    if args.config:
        from kvgate.gateway.reload import file_stamp

        # (SIGHUP ignored: ``main``) An edit made before the reloader is up is seen at the first poll: the
        # modification time is the one from before the file was read.
        stamp = file_stamp(args.config)
    try:
        # Flags that cannot apply are refused, not ignored, as their siblings (review s20-qa L1).
        if args.cluster_policy is not None or args.cluster_policy_seed is not None:
            flag = "--cluster-policy" if args.cluster_policy is not None else "--cluster-policy-seed"
            raise GatewayConfigError(flag, "only with --clusters")
        if (why := poolflags.refused(args.pool_namespace, args.pool_name)) is not None:
            raise GatewayConfigError(poolflags.FLAG, why)
        if args.config and not (args.endpoints or args.model):
            file_cfg = load_gateway_config(args.config)
        cfg = build_config(args, file_cfg)
        if args.kv_events == "auto":
            from kvgate.gateway import kv_auto

            for note in kv_auto.apply(cfg):
                say(f"kvgate serve: {note}")  # (one write: qa35b side note, spliced by a log line)
        pools = build_pools(cfg, preload=cfg.workers <= 1)  # (a --workers worker preloads its own)
        if cfg.api_keys_file or cfg.api_keys_env:  # a bad key file is a config error, not a traceback
            from kvgate.gateway.tenants import ApiKeyError, load_keys

            try:
                load_keys(cfg.api_keys_file, cfg.api_keys_env)
            except ApiKeyError as e:
                raise GatewayConfigError("auth", str(e)) from e
    except GatewayConfigError as e:
        print(f"kvgate serve: config error: {e}", file=sys.stderr)
        return 2
    _raise_nofile()
    if cfg.workers > 1:
        from kvgate.gateway.workers import run_workers

        try:
            return run_workers(cfg, cfg.workers, args.config, file_cfg, stamp, reload_loader(args))
        except OSError as e:  # the port is taken, or SO_REUSEPORT is unavailable
            print(f"kvgate serve: cannot listen on {cfg.host}:{cfg.port}: {e}", file=sys.stderr)
            return 1
    try:
        import uvloop

        uvloop.run(serve(cfg, pools, args.config, file_cfg, stamp, reload_loader(args)))
    except KeyboardInterrupt:
        pass
    return 0
