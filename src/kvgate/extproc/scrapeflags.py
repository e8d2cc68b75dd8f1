"""The reference EPP's scrape flags, met with the picker config's ``metrics-data-source`` (qa36a F6, F13).

GIE's ``--model-server-metrics-port`` / ``-path`` / ``-scheme`` / ``-https-insecure-skip-verify`` say where
its default data source reads each endpoint's page, ``--refresh-metrics-interval`` how often: they are the
settings a config's ``metrics-data-source`` gives per key (``port``, ``path``, ``scheme``, its TLS keys,
``interval``). One rule, the reference's (a configured data source's parameters are its own; the flags
only shape the default one): a key the config sets wins over its flag, and a flag given explicitly that
the config overrides is one WARNING naming both, never silence. Flags left out are the reference's
defaults, which are kvgate's (the endpoint's own port, ``/metrics``, http, 50 ms).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace

from kvgate.datalayer.scrape_source import ScrapeSource, source_tls

# flag -> (``args`` name, the data-source key it stands for)
FLAGS = {
    "--model-server-metrics-port": ("model_server_metrics_port", "port"),
    "--model-server-metrics-path": ("model_server_metrics_path", "path"),
    "--model-server-metrics-scheme": ("model_server_metrics_scheme", "scheme"),
    "--model-server-metrics-https-insecure-skip-verify": (
        "model_server_metrics_https_insecure_skip_verify",
        "insecureSkipVerify",
    ),
}
INTERVAL_FLAGS = ("--scrape-interval", "--refresh-metrics-interval")


def flag_source(args: argparse.Namespace) -> ScrapeSource | None:
    """What the flags given ask of the scraper (None: none given). ``ValueError`` names a bad flag."""
    port = args.model_server_metrics_port or None  # (0: the endpoint's own port, the reference's default)
    path = args.model_server_metrics_path
    if path is not None and not path.startswith("/"):
        raise ValueError(f"--model-server-metrics-path: must start with '/', got {path!r}")
    scheme = args.model_server_metrics_scheme
    insecure = args.model_server_metrics_https_insecure_skip_verify
    # (the reference reads the TLS flag only for https; its default, true, is ``resolve``'s for http pools)
    tls = source_tls(insecure) if insecure is not None and scheme == "https" else None
    if port is None and path is None and scheme is None and tls is None:
        return None
    return ScrapeSource(scheme=scheme, path=path, port=port, tls=tls, origin="--model-server-metrics-*")


def merge(
    config: ScrapeSource | None,
    flags: ScrapeSource | None,
    given: Mapping[str, str],
    interval_flag: str | None,
    args: argparse.Namespace,
) -> tuple[ScrapeSource | None, list[str]]:
    """The source the scraper uses: ``config``'s keys, the flags' where the config leaves one out; and
    the WARNING lines for flags given (``given``: ``args`` names) that the config overrides.
    ``interval_flag``: the scrape-interval flag given, if any (the config's ``interval`` wins over it)."""
    warnings: list[str] = []
    origin = config.origin or "metrics-data-source" if config is not None else ""
    if config is not None:
        for flag, (dest, key) in FLAGS.items():
            if dest not in given:
                continue
            field = "tls" if key == "insecureSkipVerify" else key
            if getattr(config, field) is not None:
                warnings.append(
                    f"{flag} {getattr(args, dest)} not applied: the config's {origin}.{key} is set "
                    "(a metrics-data-source key wins over the reference EPP's flag)"
                )
        if interval_flag is not None and config.interval is not None:
            value = getattr(args, interval_flag.lstrip("-").replace("-", "_"))
            warnings.append(
                f"{interval_flag} {value} not applied: the config's {origin}.interval "
                f"({config.interval:g} s) sets the scrape interval (a metrics-data-source key wins over "
                "the flag, as the reference's source interval over its --refresh-metrics-interval)"
            )
    if flags is None:
        return config, warnings
    if config is None:
        return flags, warnings
    merged = replace(
        config,
        scheme=config.scheme or flags.scheme,
        path=config.path or flags.path,
        port=config.port or flags.port,
        tls=config.tls or flags.tls,
        origin=config.origin if config.scheme is not None else flags.origin,
    )
    return merged, warnings
