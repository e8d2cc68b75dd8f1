"""`kvgate epp`: run the Envoy ext_proc Endpoint Picker for one InferencePool.

Flag names follow the reference EPP where they exist (``--grpc-port``, ``--grpc-health-port``,
``--metrics-port``, ``--secure-serving``, ``--cert-path``, ``--config-file``, ``--config-text``,
``--pool-name``, ``--pool-namespace``) so a Deployment written for it runs kvgate unchanged, apart from
the Kubernetes client flags. With ``--pool-name`` and no ``--endpoints``/``--config``, the endpoints come
from the InferencePool (``kvgate.k8s``); ``--ha-enable-leader-election`` makes one replica ready at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import ssl
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvgate.aio import serve_on_sighup
from kvgate.config.gateway import group_not_the_files
from kvgate.config.policies import POLICIES
from kvgate.datalayer.store import ENGINE_LABELS, ENGINES
from kvgate.entry import (
    ArgumentParser,
    finite_number,
    log_level,
    number,
    port_number,
    positive_int,
    sighup_ignored,
)
from kvgate.extproc import keys
from kvgate.extproc.upstream_flags import go_duration, split_unknown
from kvgate.k8s import poolflags
from kvgate.k8s import resources as R
from kvgate.openai.labels import GRACE_S
from kvgate.openai.protocol import DEFAULT_SESSION_HEADER
from kvgate.scheduling import tokenize
from kvgate.stderrlog import off_loop_stderr, say

if TYPE_CHECKING:
    from kvgate.datalayer.store import EndpointStore
    from kvgate.extproc.config import EppConfig
    from kvgate.extproc.metrics import EppMetrics
    from kvgate.extproc.server import EppServer
    from kvgate.extproc.session import SessionContext
    from kvgate.extproc.tls import KeyPair
    from kvgate.k8s.runtime import KubePool

log = logging.getLogger("kvgate.epp")


def _seconds(text: str) -> float:
    """An argparse type for a finite duration that may be 0 (``--drain-timeout 0``: cut at once)."""
    value = finite_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parser() -> argparse.ArgumentParser:
    # No abbreviations: an unknown reference flag must never be read as a prefix of one of ours.
    p = ArgumentParser(
        prog="kvgate epp", description=__doc__.split("\n\n")[0] if __doc__ else None, allow_abbrev=False
    )
    src = p.add_argument_group("pool")
    src.add_argument("--config", help="gateway config YAML (pools, objectives, rewrites); serves one pool")
    src.add_argument(
        "--shared-config",
        action="store_true",
        help="--config is a file shared with kvgate serve: its keys kvgate epp does not apply (listen, auth, "
        "rateLimits, most limits and health) are one warning each, not an error",
    )
    src.add_argument(
        "--pool-name", help="InferencePool to discover from Kubernetes (or: which pool of --config to serve)"
    )
    src.add_argument(
        "--pool-namespace",
        default=None,
        help="with --pool-name: the InferencePool's namespace (default: $NAMESPACE, else default: the "
        "reference EPP's order, as kvgate serve)",
    )
    src.add_argument(
        "--pool-group",
        choices=sorted(R.POOL_GROUPS),
        default=None,
        help=f"the InferencePool's API group (default {R.INFERENCE_POOL.group}, v1; {R.LEGACY_GROUP}: the "
        "older v1alpha2 pool, as the reference EPP's flag)",
    )
    src.add_argument("--endpoints", help="comma-separated ip:port list of the pool's model servers")
    src.add_argument(
        "--endpoint-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="label every --endpoints endpoint, as a pod label would (repeatable; e.g. kvgate.io/gpu=H100: "
        "the GPU type and speed in the pool aggregate)",
    )
    src.add_argument("--model", action="append", default=[], help="model the pool serves (repeatable)")
    src.add_argument("--engine", help=" | ".join(ENGINES) + " (default vllm)")
    src.add_argument(
        "--engine-label-key",
        default=None,
        metavar="KEY",
        help="the one pod label that names its engine, as the reference EPP's flag; over the config's "
        f"engineLabelKey (default: the config's engineLabelKey, else {' else '.join(ENGINE_LABELS)})",
    )
    src.add_argument(
        "--adapter", action="append", default=[], help="LoRA adapter name the pool serves (repeatable)"
    )
    src.add_argument(
        "--pass-priority",
        action="store_true",
        help="send the InferenceObjective priority to the servers as vLLM's priority field (negated; "
        "for servers run with --scheduling-policy priority; as pools[].passPriority)",
    )
    src.add_argument(
        "--session-header", default=None, help=f"session-affinity header (default {DEFAULT_SESSION_HEADER})"
    )
    pick = p.add_argument_group("picker")
    pick.add_argument(
        "--policy",
        help=f"named policy: {' | '.join(POLICIES)} (default kvgate; replaced by --config-file / "
        "--config-text)",
    )
    pick.add_argument("--config-file", help="EndpointPickerConfig YAML (replaces --policy)")
    pick.add_argument("--config-text", help="EndpointPickerConfig as inline YAML")
    pick.add_argument(
        "--scrape-interval",
        type=finite_number,
        help="seconds between /metrics scrapes (default: --config's or 0.05)",
    )
    # The reference EPP's scrape flags (GIE options.go; its defaults): a config's metrics-data-source key
    # wins over each, with one WARNING naming both (qa36a F6/F13; ``_flag_source``).
    pick.add_argument(
        "--refresh-metrics-interval",
        type=go_duration,
        metavar="DURATION",
        help="reference flag: --scrape-interval as a Go duration (50ms)",
    )
    pick.add_argument(
        "--model-server-metrics-port",
        type=port_number,
        metavar="PORT",
        help="reference flag: scrape every endpoint's metrics on this port (0, the default: its own port)",
    )
    pick.add_argument(
        "--model-server-metrics-path", metavar="PATH", help="reference flag: the metrics path (/metrics)"
    )
    pick.add_argument(
        "--model-server-metrics-scheme",
        choices=("http", "https"),
        help="reference flag: the scrape scheme (http; https pools from --config: https)",
    )
    pick.add_argument(
        "--model-server-metrics-https-insecure-skip-verify",
        type=_bool,
        nargs="?",
        const=True,
        metavar="BOOL",
        help="reference flag: with --model-server-metrics-scheme https, no certificate check (true)",
    )
    pick.add_argument(
        "--metrics-staleness-threshold",
        type=go_duration,
        metavar="DURATION",
        help="reference flag: metrics older than this leave the inference_pool_* gauges (2s)",
    )
    pick.add_argument(
        "--enable-conformance-hooks",
        action="store_true",
        help="honour test-epp-endpoint-selection and report x-conformance-test-served-endpoint",
    )
    net = p.add_argument_group("serving")
    net.add_argument("--host", default="0.0.0.0", help="listen address (all interfaces, as in a pod)")
    net.add_argument("--port", "--grpc-port", dest="port", type=port_number, default=keys.DEFAULT_GRPC_PORT)
    net.add_argument("--grpc-health-port", type=port_number, default=keys.DEFAULT_HEALTH_PORT)
    net.add_argument("--metrics-port", type=port_number, default=keys.DEFAULT_METRICS_PORT)
    net.add_argument("--plaintext", action="store_true", help="serve ext_proc without TLS")
    net.add_argument("--secure-serving", type=_bool, default=True, help="reference flag: false = --plaintext")
    net.add_argument("--cert-path", help="directory with tls.crt and tls.key (a Kubernetes TLS Secret)")
    net.add_argument("--cert", help="server certificate PEM")
    net.add_argument("--key", help="server private key PEM")
    net.add_argument("--client-ca", help="require client certificates signed by this CA (mutual TLS)")
    net.add_argument(
        "--metrics-tls",
        action="store_true",
        help="serve the metrics port (/metrics, /v1/pool/aggregate) with the same TLS / mTLS",
    )
    net.add_argument(
        "--max-concurrent-streams",
        type=positive_int,
        default=10_000,
        help="ext_proc streams (requests) served at once; more are refused with RESOURCE_EXHAUSTED",
    )
    net.add_argument(
        "--max-buffered-bytes",
        type=int,
        help="bytes all streams together may hold (request bodies, JSON responses); over it: 503 (default: "
        "--config's limits.maxBufferedBytes, else 1 GiB)",
    )
    net.add_argument(
        "--stream-idle-timeout",
        type=finite_number,
        default=600.0,
        help="seconds a stream may stay silent where the EPP waits on Envoy (the request's rest, a started "
        "answer's next chunk) before it is cancelled; a routed request waiting for its answer is never idle",
    )
    net.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=keys.DEFAULT_DRAIN_TIMEOUT_S,
        metavar="SECONDS",
        help="on SIGTERM / SIGINT: not ready at once (gRPC health, /readyz), new streams refused, the open "
        "ones served up to this long, then cut (keep it under the pod's terminationGracePeriodSeconds); "
        "a second signal cuts the drain at once (default: the limits.drainTimeoutSeconds of --config or "
        f"--clusters, else {keys.DEFAULT_DRAIN_TIMEOUT_S:g})",
    )
    net.add_argument(
        "--model-series-grace",
        type=number,
        default=GRACE_S,
        metavar="SECONDS",
        help="a model name neither known, reported, answered nor used this long loses its metric series "
        "(docs/epp.md); > 0; inf: never for being unused (names no longer labels still go past 256)",
    )
    net.add_argument(
        "--tls-hosts",
        default="localhost,127.0.0.1",
        help="names/IPs for the generated self-signed certificate",
    )
    kube = p.add_argument_group("kubernetes")
    kube.add_argument("--kube-server", help="API server URL (default: in-cluster, else the kubeconfig's)")
    kube.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG, ~/.kube/config)"
    )
    kube.add_argument(
        "--ha-enable-leader-election",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="only the holder of a coordination.k8s.io Lease is ready; the others keep their data warm",
    )
    kube.add_argument("--ha-lease-name", help="the Lease's name (default kvgate-epp-<pool-name>)")
    kube.add_argument(
        "--ha-lease-duration", type=finite_number, default=15.0, help="seconds (client-go's default)"
    )
    kube.add_argument("--ha-renew-deadline", type=finite_number, default=10.0, help="seconds")
    kube.add_argument("--ha-retry-period", type=finite_number, default=2.0, help="seconds")
    kube.add_argument(
        "--kube-stale-after",
        type=float,
        default=None,
        help="seconds out of sync with the API server after which a watched resource is logged as "
        "stale (default 120, or --config's kubernetes.staleAfterSeconds; "
        "kvgate_reflector_last_sync_age_seconds has the age; the EPP keeps routing on "
        "its last list; with --clusters: each member's InferencePool watch)",
    )
    kube.add_argument(
        "--kube-stale-not-ready-after",
        type=float,
        default=None,
        help="report not-ready once the InferencePool's or the pods' copy is this many seconds old, so "
        "traffic moves to a replica that still reaches its API server (0: never, the default, or --config's "
        "kubernetes.staleNotReadyAfterSeconds; else at least --kube-stale-after)",
    )
    hub = p.add_argument_group("hub (multi-cluster)")
    hub.add_argument("--clusters", help="clusters file: pick clusters, not pods (docs/multicluster.md)")
    hub.add_argument(
        "--cluster-policy",
        default=None,
        help="with --clusters: kvgate (default)|llm-d-hub|round-robin|active-passive",
    )
    hub.add_argument(
        "--cluster-policy-seed",
        type=int,
        default=None,
        help="seed of the kvgate cluster policy's random picks; default: os.urandom (logged)",
    )
    hub.add_argument(
        "--destination-fallbacks",
        type=_bool,
        default=None,
        help="with --clusters: true = name the other clusters' gateways after the chosen one (for Envoy's "
        "Override Host policy); false = the chosen one alone (an ORIGINAL_DST cluster's one address); "
        "default: the clusters file's destination_fallbacks, else false",
    )
    p.add_argument("--log-level", type=log_level, default="info")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    with sighup_ignored():  # (until ``_serve``'s handler is in)
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    p = parser()
    args, unknown = p.parse_known_args(argv)
    # The reference EPP's own flags (--v, --zap-*, --enable-pprof, ...) must not stop a drop-in
    # replacement: ignored with a warning; anything else (a misspelt option of ours) is refused (qa24 F3).
    ignored, refused_args = split_unknown(unknown)
    if refused_args:
        p.error(f"unrecognized arguments: {' '.join(refused_args)}")
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=fmt)
    off_loop_stderr()  # (as ``kvgate serve``'s: a stderr nobody reads stalls no stream)
    if ignored:
        log.warning("ignoring the reference EPP's arguments kvgate does not use: %s", " ".join(ignored))
    from kvgate.datalayer.store import EndpointStore, make_endpoint
    from kvgate.extproc.config import EppConfigError, load
    from kvgate.extproc.context import build_context
    from kvgate.extproc.metrics import EppMetrics, models_reported

    given = given_options(argv)
    if args.clusters:
        if (flag := next((f for dest, f in given.items() if dest not in _HUB_TAKES), None)) is not None:
            p.error(f"{flag}: {HUB_REFUSED}")
        return _hub_main(args, given)
    drain_from = DRAIN_FLAG  # (the drain's log lines name where it came from)
    try:
        refused = _pool_flags_refused(args) if args.config else []
        # (the flag without --pool-name is refused as kvgate serve refuses it; the namespace is resolved
        # only where it names a pool: poolflags, qa26 F8's $NAMESPACE order)
        if (why := poolflags.refused(args.pool_namespace, args.pool_name)) is not None:
            raise EppConfigError(f"{poolflags.FLAG}: {why}")
        if args.shared_config and not args.config:
            raise EppConfigError("--shared-config: only with --config (it says how to read that file)")
        # Flags that cannot apply are refused, not ignored (review s20-qa L1).
        hub_only = {"--cluster-policy": args.cluster_policy,
                    "--cluster-policy-seed": args.cluster_policy_seed,
                    "--destination-fallbacks": args.destination_fallbacks}  # fmt: skip
        if (flag := next((f for f, v in hub_only.items() if v is not None), None)) is not None:
            raise EppConfigError(f"{flag}: only with --clusters")
        try:
            cfg = load(
                config=args.config, pool_name=args.pool_name, endpoints=args.endpoints, models=args.model,
                policy=args.policy or "kvgate", engine=args.engine or "vllm", config_file=args.config_file,
                config_text=args.config_text, conformance=args.enable_conformance_hooks,
                adapters=args.adapter, session_header=args.session_header,
                pool_namespace=poolflags.pool_namespace(args.pool_namespace),
                pass_priority=args.pass_priority, shared_config=args.shared_config,
            )  # fmt: skip
        except EppConfigError as e:
            raise EppConfigError("\n".join([*refused, str(e)])) from None
        if refused:
            raise EppConfigError("\n".join(refused))
        kube_flag = "--kube-server" if args.kube_server else "--kubeconfig" if args.kubeconfig else None
        none_watched = poolflags.NONE_WATCHED  # (why none is watched: review s27-rev-docs27 F6)
        if kube_flag and cfg.pool.inference_pool is None:
            raise EppConfigError(f"{kube_flag}: {none_watched}")
        if args.pool_group is not None and cfg.pool.inference_pool is None:
            raise EppConfigError(f"--pool-group: {none_watched}")
        if args.pool_namespace and cfg.pool.inference_pool is None:  # (review s27-rev-a27 F3)
            raise EppConfigError(f"{poolflags.FLAG}: {none_watched}")
        ref = cfg.pool.inference_pool  # (with --config: the file's; --pool-name only picked the pool)
        if ref and (why := poolflags.not_the_files(args.pool_namespace, cfg.pool.name, ref.namespace)):
            raise EppConfigError(f"{poolflags.FLAG}: {why}")
        if ref and (why := group_not_the_files(args.pool_group, cfg.pool.name, ref)):
            raise EppConfigError(f"{poolflags.GROUP_FLAG}: {why}")
        if args.ha_enable_leader_election and cfg.pool.inference_pool is None:
            raise EppConfigError("--ha-enable-leader-election needs Kubernetes discovery (--pool-name)")
        pair, client_ca = _tls(args)
        # Build the Director before serving, so a bad EndpointPickerConfig is a clear exit, not a traceback.
        labels = _endpoint_labels(args.endpoint_label)
        store = EndpointStore()
        label = _engine_label(args.engine_label_key, cfg.picker_config)
        if label:  # (read before any endpoint is added: discovery's pods and the listed)
            store.engine_labels = (label,)
        store.sync(
            make_endpoint(a, pool=cfg.pool.name, engine=cfg.pool.engine, labels=labels)
            for a in cfg.pool.endpoints
        )
        # Model labels: the pool's models, adapters and rewrite rules' names and those the pods' metrics
        # report serving, others once a model server answered them, into the slots those
        # leave (kvgate.openai.labels).
        if not args.model_series_grace > 0:
            raise EppConfigError("--model-series-grace must be > 0")
        reported = models_reported(store.all, time.monotonic)
        metrics = EppMetrics(models=model_labels(cfg, reported, args.model_series_grace))
        ctx = build_context(cfg, store, clock=time.monotonic, observer=metrics)
        # Before ready: the pool's models' ``tokenizer: auto`` tokenizers, and what a first pick would start.
        tokenize.preload_for(ctx.director, cfg.pool.models)
        tokenize.warm()
        # The flags over --config's scrapeIntervalSeconds and limits.maxBufferedBytes (their defaults else).
        if "scrape_interval" in given and "refresh_metrics_interval" in given:
            raise EppConfigError("--scrape-interval, --refresh-metrics-interval: the same setting, give one")
        if args.refresh_metrics_interval is not None:  # (the reference's spelling of it: qa36a F6)
            args.scrape_interval = args.refresh_metrics_interval
        if args.scrape_interval is None:
            args.scrape_interval = cfg.scrape_interval_s
        if args.max_buffered_bytes is None:
            args.max_buffered_bytes = cfg.max_buffered_bytes
        if args.config and "drain_timeout" not in given:  # (as kvgate serve's key: the flag over it)
            args.drain_timeout, drain_from = cfg.drain_timeout_s, DRAIN_KEY
        cap = "--config's limits.maxBodyBytes" if args.config else "the body cap"
        _check_stream_limits(args, cfg.max_body_bytes, cap)
        if not 0 < args.scrape_interval < math.inf:
            raise EppConfigError(f"--scrape-interval must be a finite number > 0, got {args.scrape_interval}")
        ctx.budget.limit = args.max_buffered_bytes
        staleness = _staleness(args, cfg)
        scrape_src = _scrape_source(args, given, ctx.director)
        kube = _kube_pool(args, cfg, store, ctx, staleness)
    except (EppConfigError, OSError, ValueError, KeyError) as e:
        for line in str(e).splitlines():  # (several refused keys: one line each)
            print(f"kvgate epp: {line}", file=sys.stderr)
        return 2
    pool = cfg.pool  # (https endpoints, from --config: scraped over TLS, verified against its caFile)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, store, ctx, metrics, pair, client_ca, kube=kube, drain_from=drain_from,
                           scrape_scheme=pool.scheme, scrape_ca=pool.ca_file,
                           scrape_source=scrape_src))  # fmt: skip
    return 0


def _scrape_source(args: argparse.Namespace, given: dict[str, str], director: Any) -> Any:
    """The scraper's data source: the config's ``metrics-data-source`` over the reference's scrape flags
    (``scrapeflags``; its WARNINGs logged here), and ``--metrics-staleness-threshold`` on the pool gauges
    (qa36a F6, F13). ``ValueError`` names a bad flag."""
    from kvgate.config.director import metrics_source
    from kvgate.extproc.scrapeflags import flag_source, merge

    interval_flag = given.get("scrape_interval") or given.get("refresh_metrics_interval")
    src, warnings = merge(metrics_source(director), flag_source(args), given, interval_flag, args)
    for line in warnings:
        log.warning("%s", line)
    if args.metrics_staleness_threshold is not None and hasattr(director, "gauge_staleness_s"):
        director.gauge_staleness_s = args.metrics_staleness_threshold
    return src


def _check_stream_limits(args: argparse.Namespace, body_cap: int, cap: str) -> None:
    """``--max-buffered-bytes`` and ``--stream-idle-timeout``, in both modes (``EppConfigError``)."""
    from kvgate.extproc.config import EppConfigError

    if args.max_buffered_bytes <= 0 or args.stream_idle_timeout <= 0:
        raise EppConfigError("--max-buffered-bytes and --stream-idle-timeout must be > 0")
    if args.max_buffered_bytes < body_cap:  # (as the file's pair and kvgate serve's flag)
        raise EppConfigError(
            f"--max-buffered-bytes must be >= {cap} ({body_cap}), got {args.max_buffered_bytes}: a body "
            "between the two could never be held, and would be told to retry (503) forever"
        )


# Where the drain comes from (said by the drain's log lines): the flag (or its default), else ``--config``'s
# or ``--clusters``' key.
DRAIN_FLAG = "--drain-timeout"
DRAIN_KEY = "limits.drainTimeoutSeconds"

# With --config the pool is the file's: these flags would do nothing there (s19-qa M2), so each is refused.
POOL_FLAGS = {
    "endpoints": ("--endpoints", "pools[].endpoints"),
    "model": ("--model", "pools[].models"),
    "adapter": ("--adapter", "pools[].adapters"),
    "engine": ("--engine", "pools[].engine"),
    "policy": ("--policy", "pools[].policy or endpointPickerConfig; --config-file, --config-text replace it"),
}


def _pool_flags_refused(args: argparse.Namespace) -> list[str]:
    """One line for each pool flag given beside ``--config``."""
    return [
        f"{flag}: not with --config (the pool comes from the file: {key})"
        for attr, (flag, key) in POOL_FLAGS.items()
        if getattr(args, attr)
    ]


def model_labels(cfg: Any, reported: Any, grace_s: float) -> Any:
    """The EPP's ``ModelLabels``: the pool's models and adapters for good, the config file's rewrite rules'
    names until live InferenceModelRewrites replace them (``_kube_pool``'s listener, ``set_rules``)."""
    from kvgate.openai.labels import ModelLabels

    return ModelLabels([*cfg.pool.models, *cfg.pool.adapters], reported=reported, grace_s=grace_s,
                       rules=rewrite_names(cfg.gateway.rewrites))  # fmt: skip


def rewrite_names(rules: Iterable[Any]) -> list[str]:
    """The model names rewrite rules (``RewriteRule``) name, sources and targets: labels of their own."""
    return [name for rule in rules for name in (*rule.matches, *(t.model for t in rule.targets))]


def _endpoint_labels(items: list[str]) -> dict[str, str]:
    from kvgate.extproc.config import EppConfigError

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EppConfigError(f"--endpoint-label {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


# ``--clusters`` (the hub EPP): the options it takes (``args`` names). Every other one is a pool EPP's (its
# endpoints, models, picker, scrape, Kubernetes client and Lease) and is refused, naming it, as ``kvgate serve
# --clusters`` refuses its own (before epp28 they were taken and did nothing). ``--config`` and the pool
# flags are refused by ``_hub_main``, each with its own reason.
_HUB_TAKES = frozenset(
    {"clusters", "cluster_policy", "cluster_policy_seed", "destination_fallbacks", "model_series_grace",
     "host", "port", "grpc_health_port", "metrics_port", "plaintext", "secure_serving", "cert_path", "cert",
     "key", "client_ca", "metrics_tls", "tls_hosts", "max_concurrent_streams", "max_buffered_bytes",
     "stream_idle_timeout", "drain_timeout", "kube_stale_after", "kube_stale_not_ready_after", "log_level",
     "config", "pool_name", "pool_namespace", "pool_group"}
)  # fmt: skip
HUB_REFUSED = (
    "not with --clusters (the hub EPP's candidates are the clusters file's clusters: it serves no pool's "
    "endpoints, scrapes no pod and takes no Lease; the clusters file's kubernetes: section names its API "
    "servers; it takes the listen, TLS and stream flags, --drain-timeout, --cluster-policy, "
    "--cluster-policy-seed, --destination-fallbacks, --model-series-grace and --kube-stale-after)"
)


def given_options(argv: list[str] | None) -> dict[str, str]:
    """The options given on the command line (a default given explicitly included): ``args`` name -> flag,
    in the order given."""
    p = parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    given, _unknown = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    flags = {a.dest: a.option_strings[-1] for a in p._actions if a.option_strings}
    return {dest: flags[dest] for dest in vars(given)}


# The InferencePool flags (flag -> its ``args`` name): refused with ``--clusters`` (review s27-rev-a27 F3).
_HUB_UNUSED_POOL_FLAGS = {"--pool-name": "pool_name", poolflags.FLAG: "pool_namespace",
                          "--pool-group": "pool_group"}  # fmt: skip


def _hub_main(args: argparse.Namespace, given: dict[str, str]) -> int:
    """``--clusters``: the hub EPP; its candidates are the clusters' gateways (kvgate.multicluster.hub)."""
    from kvgate.extproc.context import AddressIndex
    from kvgate.extproc.metrics import EppMetrics
    from kvgate.extproc.session import SessionContext
    from kvgate.k8s.stalepolicy import hub_policy
    from kvgate.multicluster.clusters import NOT_WITH_CONFIG, ClustersError, ClustersFile
    from kvgate.multicluster.hub import ClusterDirector, HubFeed, hub_check
    from kvgate.multicluster.policies import fresh_seed
    from kvgate.multicluster.state import models_listed
    from kvgate.openai.labels import ModelLabels

    seed = fresh_seed() if args.cluster_policy_seed is None else args.cluster_policy_seed
    drain_from = DRAIN_FLAG
    args.cluster_policy = args.cluster_policy or "kvgate"
    log.info("hub EPP: cluster policy %s, seed %d", args.cluster_policy, seed)
    try:
        if args.config:  # the clusters file is the whole configuration: --config would be read by nothing
            raise ValueError(f"--config: {NOT_WITH_CONFIG}")
        if flag := next((f for f, v in _HUB_UNUSED_POOL_FLAGS.items() if getattr(args, v) is not None), None):
            raise ValueError(f"{flag}: not with --clusters (the hub EPP watches no InferencePool: its "
                             "candidates are the clusters file's clusters)")  # fmt: skip
        _staleness_flags(args, "hub")
        cfile = ClustersFile(args.clusters, check=hub_check)
        director = ClusterDirector(
            cfile.config, args.cluster_policy, seed=seed, fallbacks=args.destination_fallbacks
        )
        # The clusters file's drain, as ``kvgate serve --clusters`` reads it from the same file, the flag over
        # it (before fixb28 it was dropped silently: 30 s; review s28-rev-b28 F2). Read again at the stop.
        if "drain_timeout" not in given:
            args.drain_timeout, drain_from = cfile.config.drain_timeout_s, DRAIN_KEY
        pair, client_ca = _tls(args)
    except (ClustersError, ValueError, OSError) as e:
        print(f"kvgate epp: {e}", file=sys.stderr)
        return 2
    # Model labels: the names the clusters' aggregates list, others into the slots left
    # (kvgate.openai.labels).
    if not args.model_series_grace > 0:
        print("kvgate epp: --model-series-grace must be > 0", file=sys.stderr)
        return 2
    reported = models_listed(director.state_list, time.monotonic)
    metrics = EppMetrics(models=ModelLabels(reported=reported, grace_s=args.model_series_grace))
    # The clusters file's ``limits.requestTimeoutSeconds``, read per request (a reload applies to the next).
    ctx = SessionContext(director, AddressIndex(director.store), clock=time.monotonic, observer=metrics,
                         request_timeout_s=lambda: director.cfg.request_timeout_s)  # fmt: skip
    # The streams' byte budget, as a pool EPP's (before epp28 the flag was taken and ignored: 1 GiB).
    if args.max_buffered_bytes is None:
        args.max_buffered_bytes = ctx.budget.limit
    try:
        _check_stream_limits(args, ctx.max_request_body, "the body cap")
    except ValueError as e:
        print(f"kvgate epp: {e}", file=sys.stderr)
        return 2
    ctx.budget.limit = args.max_buffered_bytes
    try:
        with contextlib.suppress(KeyboardInterrupt):
            staleness = hub_policy(args.kube_stale_after, warn=False)
            feed = HubFeed(director, cfile, staleness=staleness, drain_from_file=drain_from == DRAIN_KEY,
                           registry=metrics.registry)  # fmt: skip
            asyncio.run(
                _serve(args, director.store, ctx, metrics, pair, client_ca, feed=feed, drain_from=drain_from)
            )
    except ClustersError as e:  # the kubernetes section cannot be loaded
        print(f"kvgate epp: {e}", file=sys.stderr)
        return 2
    return 0


def _engine_label(flag: str | None, picker: dict[str, Any] | None) -> str | None:
    """The one pod label that names an endpoint's engine: ``--engine-label-key``, else the
    EndpointPickerConfig's ``engineLabelKey`` (a metrics extractor's parameter, as the reference reads it);
    None: kvgate's default labels. The flag wins over the config (said at INFO, as the file's other keys
    a flag overrides); two extractors naming different labels are refused (one store, one label)."""
    from kvgate.extproc.config import EppConfigError
    from kvgate.scheduling.plugins.wiring import engine_label

    try:
        named = engine_label(picker)
    except ValueError as e:
        raise EppConfigError(str(e)) from None
    if flag and named and named[1] != flag:
        log.info("--engine-label-key %r over the config's %s %r", flag, *named)
    return flag or (named[1] if named else None)


def _staleness_flags(args: argparse.Namespace, unused: str | None) -> None:
    """The two staleness flags, checked as ``kvgate serve`` checks them (the ValueError names the flag)."""
    from kvgate.k8s.stalepolicy import check_flags

    check_flags(args.kube_stale_after, args.kube_stale_not_ready_after or 0.0, unused)


def _staleness(args: argparse.Namespace, cfg: EppConfig) -> Any:
    """The pool's ``StalenessPolicy``: ``--config``'s ``kubernetes: {staleAfterSeconds,
    staleNotReadyAfterSeconds}`` (as ``kvgate serve``'s file; read at start: ``kvgate epp`` does not
    reload its config), each overridden by its flag, checked as ``kvgate serve`` checks them (the
    ValueError names the flag or key the value came from). The file's keys are file-wide and judged as
    ``kvgate serve`` judges them: accepted when any pool of the file comes from an InferencePool, so the
    EPP of a static pool of a shared file starts (its keys apply to the watched pools' EPPs, none here);
    refused where no pool of the file is watched. A flag is this process's: refused on a static pool's EPP
    (it watches nothing). None for a static pool."""
    from kvgate.k8s.stalepolicy import file_and_flags, refuse_unused, staleness_policy

    gw = cfg.gateway
    here = cfg.pool.inference_pool is not None
    in_file = any(pool.inference_pool is not None for pool in gw.pools)
    stale, not_ready = file_and_flags(
        args.kube_stale_after, args.kube_stale_not_ready_after, gw.kube_stale_after_s,
        gw.kube_stale_not_ready_after_s, None if in_file else "static",
    )  # fmt: skip
    if here:
        return staleness_policy(stale, not_ready, warn=False)
    why = (f"this EPP serves pool {cfg.pool.name!r}, which does not come from an InferencePool (the "
           f"config's kubernetes keys apply to its watched pools' EPPs)")  # fmt: skip
    refuse_unused(args.kube_stale_after, args.kube_stale_not_ready_after or 0.0, why)  # a ValueError
    return None


def _kube_pool(
    args: argparse.Namespace, cfg: EppConfig, store: EndpointStore, ctx: SessionContext, staleness: Any
) -> Any:
    """Kubernetes discovery (and leader election) when the pool comes from an InferencePool, else None."""
    ref = cfg.pool.inference_pool
    if ref is None:
        return None
    from kvgate.config.rewrite import ModelRewriter
    from kvgate.k8s.runtime import KubeOptions, KubePool
    from kvgate.openai.request import RequestPolicy

    # The config file's, in force while the pool has no object of the kind (review s31-qa31 Q1: the
    # first event of any pool, or of the other kind, replaced them with none for good).
    file_objectives, file_rules = dict(ctx.policy.objectives), list(cfg.gateway.rewrites)
    in_force = [file_rules]  # (the rules ``ctx.model_rewrite`` draws from now)

    def on_policy(objectives: dict[str, int], rewrites: list[Any]) -> None:
        # This pool's InferenceObjective / InferenceModelRewrite objects replace the file's, live.
        rewrites = rewrites or file_rules
        ctx.policy = RequestPolicy(
            ctx.policy.adapters,
            ctx.policy.session_header,
            objectives or file_objectives,
            ctx.policy.pass_priority,
        )
        if rewrites == in_force[0] and ctx.model_rewrite is not None:
            return  # (the same rules: a weighted split's draws go on, not restarted from the seed)
        in_force[0] = rewrites
        ctx.model_rewrite = ModelRewriter(rewrites, seed=cfg.gateway.rewrite_seed)
        models = getattr(ctx.observer, "models", None)  # (EppMetrics: the rules' names get their labels)
        if models is not None:  # (they replace the file's rules' names, or the last live rules')
            models.set_rules(rewrite_names(rewrites))

    opts = KubeOptions(
        pool_name=ref.name, pool_namespace=ref.namespace, server=args.kube_server, kubeconfig=args.kubeconfig,
        pool_group=ref.group or args.pool_group or R.INFERENCE_POOL.group,
        leader_election=args.ha_enable_leader_election, lease_name=args.ha_lease_name,
        lease_duration_s=args.ha_lease_duration, renew_deadline_s=args.ha_renew_deadline,
        retry_period_s=args.ha_retry_period,
        staleness=staleness,
    )  # fmt: skip
    return KubePool(opts, store, store_pool=cfg.pool.name, on_policy=on_policy)


def _tls(args: argparse.Namespace) -> tuple[KeyPair | None, bytes | None]:
    from kvgate.extproc import tls

    client_ca = Path(args.client_ca).read_bytes() if args.client_ca else None
    if args.plaintext or not args.secure_serving:
        return None, client_ca
    if args.cert_path or args.cert or args.key:
        return tls.load(args.cert_path, args.cert, args.key), client_ca
    log.info("TLS with a generated self-signed certificate (pass --cert-path for a real one)")
    return tls.self_signed(tuple(h.strip() for h in args.tls_hosts.split(",") if h.strip())), client_ca


async def _serve(
    args: argparse.Namespace,
    store: EndpointStore,
    ctx: SessionContext,
    metrics: EppMetrics,
    pair: KeyPair | None,
    client_ca: bytes | None,
    feed: Any = None,
    kube: KubePool | None = None,
    drain_from: str = DRAIN_FLAG,
    scrape_scheme: str = "http",
    scrape_ca: str | None = None,
    scrape_source: Any = None,
) -> None:
    """Serve until SIGTERM / SIGINT, then drain for ``args.drain_timeout`` (``drain_from``: where that
    value came from, ``DRAIN_FLAG`` or ``DRAIN_KEY``). The pool's endpoints are scraped over
    ``scrape_scheme``, https verified against ``scrape_ca`` (None: the system's CAs)."""
    from kvgate.datalayer.scraper import MetricsScraper
    from kvgate.extproc.server import EppServer, ListenError, ServerOptions
    from kvgate.multicluster.clusters import ClustersError

    opts = ServerOptions(
        host=args.host, port=args.port, health_port=args.grpc_health_port, metrics_port=args.metrics_port,
        tls=pair, client_ca=client_ca, max_concurrent_streams=args.max_concurrent_streams,
        stream_idle_timeout_s=args.stream_idle_timeout, metrics_tls=args.metrics_tls,
        grace_s=args.drain_timeout, grace_from=drain_from,
    )  # fmt: skip
    from kvgate.multicluster.export import aggregate_source

    # The pool aggregate for multi-cluster gateways, beside /metrics (kvgate.datalayer.aggregate).
    pool_name = (
        kube.store_pool
        if kube is not None and kube.store_pool
        else next(iter(store.pools()), getattr(feed, "pool", "default"))
    )
    https = bool(args.metrics_tls and pair is not None)
    mtls = https and client_ca is not None
    labels = metrics.models  # (its ``known``: the config's names, --model, adapters, rewrites, live)
    agg = aggregate_source(
        pool_name, store.all, ctx.director, tls=https, mtls=mtls, models=lambda: labels.known
    )
    if args.metrics_staleness_threshold is not None:  # (the reference's flag: its pool gauges' bound)
        agg.staleness_s = args.metrics_staleness_threshold

    def problem() -> str | None:
        # With --pool-name: ready once discovery is synced with no RBAC error, the InferencePool read and,
        # with leader election, this replica holding the Lease, whatever the pods (as the reference EPP's
        # health, ``PoolHasSynced``; qa33a F2): with no Ready pod it answers the pool's 503 with
        # ``retry-after``. Listed endpoints: while some endpoint can be picked.
        if kube is not None:
            return kube.problem()
        # The hub EPP's import controller (``kubernetes:`` in the clusters file): its problem is said,
        # but, as for ``kvgate serve --clusters``, readiness is having a cluster to pick; a loop that
        # ended on its own feeds nothing more, so that one is not ready.
        hub = getattr(feed, "source", None)
        if hub is not None and (dead := hub.dead()) is not None:
            return f"import controller: {dead}"
        # (the hub's endpoints are its clusters' gateways, never marked unhealthy: its director says
        # whether its policy would name one, as ``kvgate serve --clusters``'s router does)
        hub_ready = getattr(ctx.director, "ready", None) if feed is not None else None
        if hub_ready() if hub_ready is not None else any(e.healthy for e in store.all()):
            return None
        why = None if hub is None else hub.problem()
        return "no healthy endpoint" + ("" if why is None else f"; import controller: {why}")

    server = EppServer(
        ctx, opts, metrics=metrics, ready=lambda: problem() is None, aggregate=agg.body, readyz=problem
    )
    # A hub EPP's endpoints are cluster gateways: its feed is their aggregates, not a pod scraper.
    tls = ssl.create_default_context(cafile=scrape_ca) if scrape_scheme == "https" else None
    scraper: Any = feed or MetricsScraper(
        store,
        interval=args.scrape_interval,
        quiet_bound=getattr(ctx.director, "scrape_bound", None),
        clock=time.monotonic,
        scheme=scrape_scheme,
        tls=tls,
        source=scrape_source,  # (the config's metrics-data-source over the flags; read once, at start)
    )
    # Handlers first: a supervisor may signal as soon as it reads the ready line.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second one cuts the drain now (controller-runtime's exits at once)
            server.cut_drain()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    # SIGHUP (ignored since ``main``) never ends the EPP (review s20-qa L5): the hub EPP's clusters file is
    # looked at now; ``--config`` is read once, at start: nothing to reload.
    reload_now = getattr(feed, "reload_now", None)
    if reload_now is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_now)
    else:
        serve_on_sighup(loop, log, "kvgate epp (it reads its configuration once, at start)")
    # The data layer's other feeds (KV events) start beside the scraper, never on a first pick.
    sources: list[Any] = getattr(ctx.director, "data_sources", list)()
    parts = [("cluster feed" if feed else "metrics scraper", scraper)]
    if kube is not None:
        parts.append(("InferencePool discovery", kube))
    parts += [(f"data source {type(s).__name__}", s) for s in sources]
    # Every start failure ends in one line, what began its start stopped (one that raised part-way may hold
    # something: a KV-event subscription), as for a port taken (reviews s22-qa F3, s22-hubqa F3).
    started: list[Any] = []
    what = "server"
    try:
        server.check_ports()  # (a port in use: one line, before the scraper's first round; ``ports``)
        for label, part in parts:
            what = label
            started.append(part)
            await part.start()
        what = "server"
        await server.start()
    except Exception as e:
        why = f"{LISTEN_FLAGS[e.option]}: {e}" if isinstance(e, ListenError) else f"{what}: {e}"
        log.debug("start failed", exc_info=True)
        await _stop_all(server, kube if kube in started else None, scraper,
                        [s for s in sources if s in started], grace=0)  # fmt: skip
        if isinstance(e, ClustersError):  # the clusters file's kubernetes section: the caller's exit 2
            raise
        print(f"kvgate epp: cannot start: {why}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    # One line a supervisor (or a test) can read: the ports actually bound.
    say(f"kvgate epp ready grpc={server.port} health={server.health_port} metrics={server.metrics_port} "
        f"tls={'on' if pair else 'off'} endpoints={len(store)}")  # fmt: skip

    pool_gauges = asyncio.create_task(_every_second(ctx.director, server, stop, kube, agg))
    await stop.wait()
    log.info("shutting down: draining streams")
    await _stop_all(server, kube, scraper, sources, _file_drain(feed, drain_from))
    await pool_gauges


def _file_drain(feed: Any, drain_from: str) -> float | None:
    """The hub EPP's drain from its clusters file as last reloaded when the stop begins (a reload applies
    to it, as to ``kvgate serve --clusters``'s); None elsewhere (the start's value: the flag, or
    ``--config``'s key, read once)."""
    if feed is None or drain_from != DRAIN_KEY:
        return None
    return float(feed.source.file_cfg.drain_timeout_s)


# The flag that sets each listener's port (ListenError.option).
LISTEN_FLAGS = {"port": "--port", "health_port": "--grpc-health-port", "metrics_port": "--metrics-port"}


async def _stop_all(
    server: EppServer, kube: KubePool | None, scraper: Any, sources: list[Any], grace: float | None = None
) -> None:
    # Not ready at once (/readyz, gRPC health), before anything that may wait: the Lease's release takes
    # up to ~4 s with a slow API server (review s27-rev-fixes27c F3).
    await server.begin_drain()
    if kube is not None and kube.elector is not None:
        # The Lease next: another replica leads (and is ready) while this one drains its streams, not
        # after the drain (up to --drain-timeout with no ready replica).
        await kube.elector.stop()
    await server.stop(grace)
    if kube is not None:
        await kube.stop()
    await scraper.stop()
    for source in sources:
        await source.stop()


async def _every_second(
    director: object,
    server: EppServer,
    stop: asyncio.Event,
    kube: KubePool | None = None,
    agg: Any = None,
) -> None:
    """Refresh the inference_pool_* gauges and the readiness status (per scrape round would be too often)."""
    update = getattr(director, "update_pool_metrics", None)
    # With --pool-name its pool by name: its gauges read 0 with no endpoint, not absent or stale. The
    # Director is the one writer of inference_pool_ready_pods (ready endpoints, as the reference counts
    # its datastore's ranks with fresh metrics); a second one here, counting pods, made it flap (qa33a F1).
    pool = kube.store_pool if kube is not None and kube.store_pool else None
    while not stop.is_set():
        if update is not None:
            update(pool)
        if agg is not None:  # inference_pool_average_running_requests, llm_d_epp_*, kvgate_pool_* too
            agg.refresh_gauges()
        await server.refresh_health()
        with contextlib.suppress(TimeoutError):  # (not wait_for, which on 3.11 may drop a cancel)
            async with asyncio.timeout(1.0):
                await stop.wait()
