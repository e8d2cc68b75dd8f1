"""``kvgate serve --kv-events auto``: precise prefix routing wherever the servers publish KV events.

At start-up each pool that runs the default ``kvgate`` policy asks its endpoints for their KV-events
configuration (``kvgate.datalayer.kvdetect``). When every endpoint publishes events, and a tokenizer
for the served model is available locally (the servers' own, as they report it, else ``auto``'s look-up),
the pool runs ``precise_policy``: the same profile with the prefix signal from the engines' events, each
endpoint labelled with its event address. Otherwise (no events, some endpoints without, no tokenizer) the
pool keeps the approximate index: mixing the two signals in one cost comparison would compare guesses
with reports. Endpoints added later (config reload, Kubernetes) are not probed. A config reload compares
the file's picker with the file's own at start-up (none), not with this choice: a reload that changes only
endpoints or limits applies without asking for a restart.
"""

from __future__ import annotations

import logging

from kvgate.config.gateway import GatewayConfig, PoolConfig
from kvgate.config.policies import precise_policy
from kvgate.datalayer.kvdetect import PROBE_TIMEOUT, KVEventsInfo, probe_all
from kvgate.scheduling.plugins.precise_prefix import EVENTS_LABEL, REPLAY_LABEL
from kvgate.scheduling.tokenize import LOOKUP_ERRORS, find_for_model, tokenizer_file

log = logging.getLogger(__name__)


def _tokenizer(pc: PoolConfig, found: dict[str, KVEventsInfo]) -> str | None:
    """The tokenizer file for a pool's precise profile: a name the servers report (a path or a model), else
    a model the pool lists, the first found locally. A name the file system refuses (a NUL byte, a segment
    over 255 bytes, ``~nosuchuser``: a server's report is not checked) is passed over with one WARNING."""
    names = [i.tokenizer for i in found.values() if i.tokenizer] + list(pc.models)
    for name in filter(None, names):
        try:
            f = tokenizer_file(name)
            if not f.is_file():
                f = find_for_model(name)  # type: ignore[assignment]
        except LOOKUP_ERRORS as e:
            log.warning("kv-events: pool %s: tokenizer %r cannot be looked up (%s)", pc.name, name, e)
            continue
        if f is not None:
            return str(f)
    return None


def apply(cfg: GatewayConfig, timeout: float = PROBE_TIMEOUT) -> list[str]:
    """Switch pools whose endpoints all publish KV events to the precise profile; one line per pool."""
    notes = []
    for pc in cfg.pools:
        if pc.picker_config is not None or pc.policy != "kvgate" or not pc.endpoints:
            continue
        found = probe_all(pc.endpoints, timeout, pc.scheme)
        if len(found) < len(pc.endpoints):
            notes.append(f"pool {pc.name}: {len(found)}/{len(pc.endpoints)} endpoints publish KV events: "
                         "approximate prefix index")  # fmt: skip
            continue
        binds = {i.bind for i in found.values()}
        tok = _tokenizer(pc, found)
        bind = binds.pop() if len(binds) == 1 else None
        # The engines connect out (bind): only one process can hold the address, and every --workers
        # worker would subscribe on its own (config.gateway.check_events_bind refuses the same written
        # by hand): keep the approximate index rather than give all but one worker no events (rev-a30 F1).
        if tok is None or bind is None or (bind and cfg.workers > 1):
            why = ("no local tokenizer for the model" if tok is None else "mixed bind/connect addresses"
                   if bind is None else f"the engines connect to one address and --workers {cfg.workers} "
                   "cannot all bind it")  # fmt: skip
            notes.append(f"pool {pc.name}: KV events found but {why}: approximate prefix index")
            continue
        for addr, info in found.items():
            labels = pc.endpoint_labels.setdefault(addr, {})
            labels[EVENTS_LABEL] = info.endpoint
            if info.replay:
                labels[REPLAY_LABEL] = info.replay
        pc.picker_config = precise_policy(tok, bind=bind)
        notes.append(f"pool {pc.name}: every endpoint publishes KV events: precise prefix routing "
                     f"(tokenizer {tok})")  # fmt: skip
    for n in notes:
        log.info("kv-events: %s", n)
    return notes
