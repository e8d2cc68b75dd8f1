"""Build a ``Director`` from an ``EndpointPickerConfig`` (or a named policy, a YAML path or text).

Lives with the config loader, not in request control: the Director takes built plugins and profiles and
never reads configuration. Default plugins (the max-score picker, the single-profile handler) are
found by their registered type names, so nothing here names a plugin module either.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kvgate.config.picker import EndpointPickerConfig, instantiate, load_config, parse_config
from kvgate.config.policies import POLICIES, policy_config
from kvgate.datalayer.scrape_source import ScrapeSource
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol import config as flow_config
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.metrics import FlowMetrics
from kvgate.flowcontrol.saturation import SaturationDetector
from kvgate.requestcontrol.director import Director
from kvgate.scheduling import registry
from kvgate.scheduling.framework import ConfigError, Filter, Picker, PluginHandle, ProfileHandler
from kvgate.scheduling.profile import SchedulerProfile

log = logging.getLogger(__name__)

DEFAULT_PICKER = "max-score-picker"
DEFAULT_PROFILE_HANDLER = "single-profile-handler"


def as_config(config: EndpointPickerConfig | str | Path | Mapping[str, Any]) -> EndpointPickerConfig:
    if isinstance(config, EndpointPickerConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(config)
    if isinstance(config, str) and config in POLICIES:
        return policy_config(config)
    # (a one-line string that is no file and whose YAML is a plain string: a mistyped policy name or path,
    # said so (qa36a F9); compact one-line JSON/YAML text still loads (review rev-d36 F2))
    return load_config(config, neither=f"a policy ({', '.join(POLICIES)})")


def _default(type_name: str, name: str, handle: PluginHandle) -> Any:
    cls = registry.get(type_name)
    if cls is None:  # the plugins package itself is broken
        raise ConfigError(f"{name}: plugin type {type_name!r} is not registered")
    return cls(name, handle)


def build_director(
    config: EndpointPickerConfig | str | Path | Mapping[str, Any],
    store: EndpointStore,
    clock: Callable[[], float] = time.monotonic,
    *,
    seed: int | None = None,
    timer: Callable[[], float] = time.perf_counter,
    staleness: float = 2.0,
    flow_metrics: bool = True,
    pool: str = "",
) -> Director:
    """A Director from a config object, a policy name, a YAML path or text, or a decoded mapping. ``pool``:
    the pool it serves (flow control's ``inference_pool`` label)."""
    cfg = as_config(config)
    handle = PluginHandle(store, clock, staleness, random.Random(seed))
    for spec in cfg.plugins:
        instantiate(spec, handle)
    handler: ProfileHandler | None = None
    for p in handle.plugins.values():
        if isinstance(p, ProfileHandler):
            handler = p
    if handler is None:
        handler = _default(DEFAULT_PROFILE_HANDLER, DEFAULT_PROFILE_HANDLER, handle)
    profiles: dict[str, SchedulerProfile] = {}
    for ps in cfg.profiles:
        prof = SchedulerProfile(ps.name)
        for ref in ps.plugins:
            plugin = handle.plugins[ref.plugin_ref]
            # A detector sits in a profile only as a filter (concurrency-detector, as GIE's).
            if isinstance(plugin, ProfileHandler) or (
                isinstance(plugin, SaturationDetector) and not isinstance(plugin, Filter)
            ):
                continue
            try:
                prof.add(plugin, ref.weight)
            except ValueError as e:
                raise ConfigError(f"{ref.path}: {e}") from e
        if prof.picker is None:
            picker: Picker = _default(DEFAULT_PICKER, f"{ps.name}/{DEFAULT_PICKER}", handle)
            prof.picker = picker
        profiles[ps.name] = prof
    detector: SaturationDetector | None = None
    if cfg.saturation_detector is not None:
        det = handle.plugins.get(cfg.saturation_detector.name)
        if not isinstance(det, SaturationDetector):
            det = instantiate(cfg.saturation_detector, PluginHandle(store, clock, staleness))
        if not isinstance(det, SaturationDetector):
            raise ConfigError(
                f"{cfg.saturation_detector.path}: {det.type_name!r} is not a saturation detector"
            )
        detector = det
    flow = None
    if flow_config.enabled(cfg.feature_gates):
        fc = flow_config.parse_flow_control(cfg.flow_control, plugins=cfg.plugin_types())
        pending = fc.fair_share_headroom and fc.fair_share_headroom_on == "pending"
        if pending and cfg.saturation_detector is not None and detector and not detector.pending_bound:
            # It would take the headroom off the whole score, silently: refused instead.
            raise ConfigError(
                "flowControl.fairShareHeadroomOn: 'pending' needs a saturation detector with a pending "
                "bound (concurrency-detector with maxPendingRequests > 0); "
                f"{cfg.saturation_detector.path} ({detector.type_name!r}) has none"
            )
        for on, key in ((fc.fair_share_running_reserve, "fairShareRunningReserve"),
                        (fc.free_slot_pick, "freeSlotPick"),
                        (fc.pack_certain_misses, "packCertainMisses"),
                        (fc.prefill_alone_pick, "prefillAlonePick")):  # fmt: skip
            if on and not (detector is not None and detector.pending_bound):
                # The running slots are concurrency-detector's maxConcurrency in its pending-bound mode
                # (and the pending counts the last two read): without it the key would do nothing.
                raise ConfigError(
                    f"flowControl.{key}: needs a saturation detector with a pending bound "
                    "(concurrency-detector with maxPendingRequests > 0; its maxConcurrency is the "
                    "servers' running-batch limit)"
                )
        flow = FlowController(fc, FlowMetrics(flow_metrics, pool=pool))
    director = Director(
        profiles, handler, store, handle, detector=detector, flow=flow, timer=timer, name=cfg.name
    )
    if flow is not None:
        # The pool's saturation gauge (the reference's): the detector's score over the pool at the scrape.
        # Last, once nothing can fail: a build that raises registers nothing (review s29-qa29 Q3).
        flow.metrics.watch_saturation(_saturation(detector, store, clock))
    return director


def metrics_source(director: Any) -> ScrapeSource | None:
    """The scrape settings of ``director``'s config (its ``metrics-data-source``; None: none declared, or
    not a ``Director``), for the scraper of the pool it serves (``MetricsScraper``'s ``source``)."""
    return _source_of(getattr(getattr(director, "handle", None), "plugins", None) or {})


def _source_of(plugins: Mapping[str, Any]) -> ScrapeSource | None:
    found = (getattr(p, "source", None) for p in plugins.values())
    return next((s for s in found if isinstance(s, ScrapeSource)), None)


def _saturation(
    detector: SaturationDetector | None, store: EndpointStore, clock: Callable[[], float]
) -> Callable[[], float]:
    """The pool's saturation now: ``detector``'s score over every endpoint of ``store`` (inf with none),
    0.0 without a detector (nothing closes the dispatch gate)."""
    if detector is None:
        return lambda: 0.0
    return lambda: detector.saturation(store.all(), clock())
