"""The staleness settings (``--kube-stale-after``, ``--kube-stale-not-ready-after``; in ``kvgate serve``'s
config file ``kubernetes.staleAfterSeconds`` and ``kubernetes.staleNotReadyAfterSeconds``), checked the
same way by ``kvgate epp`` and ``kvgate serve`` in every mode, flag or file key, each error naming the one
it concerns (``kvgate.k8s.staleness`` acts on them). With ``--clusters`` (and in ``kvgate hub-controller``)
``--kube-stale-after`` sets the members' InferencePool watches' limit and the not-ready limit is refused
(``hub_policy``).

A healthy watch is in sync while it is open (``Reflector.age()`` 0) and again when the server ends it at its
timeoutSeconds; between watches the age is a back-off and a re-open. A quiet watch cut by a proxy's idle
timeout (nginx ``proxy_read_timeout``, a classic ELB: 60 s) relists, its age the time since its last proof
(up to that timeout) plus the list. A limit at or below ``QUIET_WATCH_AGE_S`` could call such a healthy
watch stale (a false WARNING; not-ready every cycle): it is accepted, for tests, with a WARNING. A not-ready
limit below the stale limit is refused: the replica would turn not-ready before the log says why.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER_S = 120.0
# The oldest a healthy quiet watch gets behind a proxy that cuts idle connections at 60 s (nginx, a classic
# ELB): the cut, a back-off and the relist, with a margin.
QUIET_WATCH_AGE_S = 95.0
STALE_FLAG, NOT_READY_FLAG = "--kube-stale-after", "--kube-stale-not-ready-after"
FLAGS = (STALE_FLAG, NOT_READY_FLAG)
# The same two in ``kvgate serve``'s config file (a flag given overrides its key).
STALE_KEY, NOT_READY_KEY = "kubernetes.staleAfterSeconds", "kubernetes.staleNotReadyAfterSeconds"
# Why the flags are refused where nothing is watched (``refuse_unused``), the same words from both commands.
NO_INFERENCE_POOL = "no pool comes from an InferencePool (--endpoints, or a config without inferencePool)"
# The hub watches its members' InferencePools (since session 15): --kube-stale-after applies to them (since
# session 16; a fixed 120 s before), the not-ready limit does not: the hub's candidates are clusters.
HUB = (
    "with --clusters the candidates are clusters, not an InferencePool's pods: the hub never turns not-ready "
    "for an old copy (--kube-stale-after applies: the members' InferencePool watches are logged stale by it)"
)


@dataclass(frozen=True, slots=True)
class StalenessPolicy:
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    # Report not-ready when the pool's or the pods' copy is older than this; None: stay ready.
    not_ready_after_s: float | None = None


class StalenessFlagError(ValueError):
    """A refused setting; ``flag`` is the flag or file key it concerns (the message starts with it)."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag, self.message = flag, message


def staleness_policy(
    stale_after_s: float | None,
    not_ready_after_s: float,
    *,
    warn: bool = True,
    names: tuple[str, str] = FLAGS,
) -> StalenessPolicy:
    """From the flags (``--kube-stale-after``, None: the default 120 s; ``--kube-stale-not-ready-after``,
    0: never not-ready). ``StalenessFlagError`` for a value that is not finite, out of range, or a not-ready
    limit below the stale limit; a WARNING (``warn``) for a limit a healthy quiet watch can reach. ``names``:
    where each value came from (the flags, or the config file's keys), as errors and warnings say it."""
    stale_name, not_ready_name = names
    if stale_after_s is None:
        stale_after_s = DEFAULT_STALE_AFTER_S
    if not (math.isfinite(stale_after_s) and stale_after_s > 0):
        raise StalenessFlagError(stale_name, f"must be a finite number of seconds > 0, got {stale_after_s:g}")
    if not (math.isfinite(not_ready_after_s) and not_ready_after_s >= 0):
        raise StalenessFlagError(
            not_ready_name, f"must be a finite number of seconds >= 0 (0: never), got {not_ready_after_s:g}"
        )
    if 0 < not_ready_after_s < stale_after_s:
        raise StalenessFlagError(
            not_ready_name,
            f"{not_ready_after_s:g} s is below {stale_name} ({stale_after_s:g} s): the replica would turn "
            f"not-ready before the log says its copy is stale; give at least {stale_after_s:g} (or 0: never)",
        )
    if warn:
        for flag, value in ((stale_name, stale_after_s), (not_ready_name, not_ready_after_s)):
            if 0 < value <= QUIET_WATCH_AGE_S:
                log.warning(
                    "%s %g s: a healthy quiet watch behind a proxy that cuts idle connections (nginx, a "
                    "classic ELB: 60 s) reaches an age of about %g s (the cut and a relist), so this limit "
                    "may also trip on one; above %g s it will not", flag, value, QUIET_WATCH_AGE_S,
                    QUIET_WATCH_AGE_S,
                )  # fmt: skip
    return StalenessPolicy(stale_after_s, not_ready_after_s or None)


def refuse_unused(
    stale_after_s: float | None, not_ready_after_s: float, why: str, names: tuple[str, str] = FLAGS
) -> None:
    """The settings given where no InferencePool is watched (a static pool, the hub): refused, not
    ignored."""
    given = [f for f, v in zip(names, (stale_after_s, not_ready_after_s or None), strict=True) if v]
    if given:
        raise StalenessFlagError(given[0], f"only with an InferencePool to watch; {why}")


def check_flags(
    stale_after_s: float | None,
    not_ready_after_s: float,
    unused: str | None,
    names: tuple[str, str] = FLAGS,
) -> None:
    """What ``kvgate epp`` and ``kvgate serve`` both run on the two settings, in every mode: the values
    (``staleness_policy``); where no InferencePool is watched (``unused`` "static") any value given is
    refused; with ``--clusters`` (``unused`` "hub") the not-ready limit is (the stale limit applies to the
    members' InferencePool watches: ``hub_policy``). ``StalenessFlagError`` names the flag or key (``names``:
    where each value came from)."""
    if unused == "hub":
        hub_policy(stale_after_s, not_ready_after_s, names)
        return
    staleness_policy(stale_after_s, not_ready_after_s, warn=unused is None, names=names)
    if unused is not None:
        refuse_unused(stale_after_s, not_ready_after_s, NO_INFERENCE_POOL, names)


def file_and_flags(
    stale_flag: float | None,
    not_ready_flag: float | None,
    stale_key: float | None,
    not_ready_key: float,
    unused: str | None,
) -> tuple[float | None, float]:
    """The two settings from a config file's keys (``kubernetes.staleAfterSeconds``,
    ``kubernetes.staleNotReadyAfterSeconds``: ``stale_key`` None and ``not_ready_key`` 0 when absent), each
    overridden by its flag when given (``stale_flag`` / ``not_ready_flag`` not None), checked by
    ``check_flags`` naming the flag or key each value came from: what ``kvgate serve`` and ``kvgate epp``
    both run on ``--config``. Returns (stale, not-ready) as ``staleness_policy`` takes them."""
    # A value's name is its key when the file gave it, else the flag (given, or the default's name).
    stale, stale_name = stale_key, STALE_KEY if stale_key is not None and stale_flag is None else STALE_FLAG
    if stale_flag is not None:
        stale = stale_flag
    not_ready = not_ready_key
    not_ready_name = NOT_READY_KEY if not_ready and not_ready_flag is None else NOT_READY_FLAG
    if not_ready_flag is not None:
        not_ready = not_ready_flag
    check_flags(stale, not_ready, unused, (stale_name, not_ready_name))
    return stale, not_ready


def hub_policy(
    stale_after_s: float | None,
    not_ready_after_s: float = 0.0,
    names: tuple[str, str] = FLAGS,
    *,
    warn: bool = True,
) -> StalenessPolicy:
    """The policy of a hub's member watches (``kvgate serve --clusters``, ``kvgate epp --clusters``,
    ``kvgate hub-controller``): ``--kube-stale-after`` checked as everywhere (WARNING included: a member's
    watch behind a proxy is cut alike), ``--kube-stale-not-ready-after`` refused (``HUB``)."""
    if not_ready_after_s:
        raise StalenessFlagError(names[1], HUB)
    return staleness_policy(stale_after_s, 0.0, warn=warn, names=names)
