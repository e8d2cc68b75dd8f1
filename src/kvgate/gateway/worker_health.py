"""What the ``kvgate serve --workers N`` supervisor says of each worker on its ``/healthz`` and ``/readyz``,
and how long a worker slot's restart waits. Pure: every age and time is given (``gateway.workers`` reads
the heartbeats and the clock).

A worker's heartbeat (its event loop writes the time every 0.5 s) tells busy from wedged without asking
it: a loop that turns writes it, a loop blocked (a long synchronous call, a stopped process) does not.
Ages up to ``LATE_S`` are a loop turning; past it the worker is *busy* (its loop has not turned for a
while: it may be doing legitimate work that blocks it) until the wedge bound (``listen.workerTimeoutSeconds``,
where the supervisor kills it; ``WEDGED_S`` when that kill is off), past which it is *wedged*. A busy
worker stays healthy and keeps its last readiness answer; a wedged one is not ready, but its process still
counts live on ``/healthz``: the supervisor kills it at ``workerTimeoutSeconds``, and where that is 0 the
operator chose no kill, so liveness kills no pod for it either (review s21-wrk M1)."""

from __future__ import annotations

from dataclasses import dataclass

# A heartbeat older than this (two beats and slack) means the worker's loop has not turned: busy.
LATE_S = 2.0
# The wedge bound where listen.workerTimeoutSeconds is 0 (no kill): the key's default.
WEDGED_S = 10.0
# A slot's restarts back off: the first at once (a worker that died after serving a while is restarted
# as before), then after 1, 2, 4, ... up to 60 s while its workers keep dying or wedging before serving
# ``STABLE_S`` (a worker that wedges every time after its start was restarted every ~10 s forever, a
# tenth of new connections hanging nearly all the time; Kubernetes' CrashLoopBackOff, systemd's
# RestartSec/StartLimit answer the same loop).
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0
# A worker that served this long (from its start report to its last heartbeat) ends its slot's streak.
STABLE_S = 60.0

# /healthz counts these: a process that runs (the supervisor handles a start, and kills a wedged one
# unless workerTimeoutSeconds is 0); a slot down or waiting out a restart backoff is not live.
LIVE = frozenset({"up", "busy", "wedged", "starting"})
# A /readyz answer that is not an HTTP status: the worker's admin port refused the connection or dropped it
# (its process ended or is ending: a busy loop's kernel still accepts and the answer only comes late).
REFUSED = -1


def restart_delay(streak: int) -> float:
    """The wait before a slot's restart when its last ``streak`` workers in a row ended before serving
    ``STABLE_S``: 0 for the first, then ``RESTART_FIRST_S`` doubling up to ``RESTART_MAX_S``."""
    if streak <= 1:
        return 0.0
    return min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** min(streak - 2, 16))


def next_streak(streak: int, served_s: float) -> int:
    """A slot's streak once its worker ended, having served ``served_s`` (0 if it never started)."""
    return 1 if served_s >= STABLE_S else streak + 1


def wedge_bound(worker_timeout_s: float) -> float:
    """The heartbeat age past which a worker is wedged: ``listen.workerTimeoutSeconds``, or ``WEDGED_S``
    where its kill is off (0): still reported, not killed."""
    return worker_timeout_s if worker_timeout_s > 0 else WEDGED_S


@dataclass(frozen=True)
class Slot:
    """One worker slot as the supervisor sees it now."""

    index: int
    pid: int | None
    alive: bool  # its process runs (a stopped one too)
    reported: bool  # it reported its start (listens) and was not killed since
    beat_age: float  # seconds since its last heartbeat (or since the supervisor's own thaw)
    restart_in: float | None = None  # its restart waits this much longer (a backoff); None: not waiting
    why: str = ""  # how the slot's last worker ended ("" if none did)


def state(slot: Slot, bound_s: float) -> str:
    """``up``, ``busy``, ``wedged``, ``starting``, ``restarting`` (a backoff wait) or ``down`` (ended,
    not yet restarted)."""
    if slot.restart_in is not None:
        return "restarting"
    if not slot.alive:
        return "down"
    if not slot.reported:
        return "starting"
    if slot.beat_age > bound_s:
        return "wedged"
    return "busy" if slot.beat_age > LATE_S else "up"


def describe(slot: Slot, st: str, bound_s: float) -> str:
    """One line saying which worker and why it is not plainly up."""
    who = f"worker {slot.index} (pid {slot.pid})"
    after = f" (after: {slot.why})" if slot.why else ""
    if st == "wedged":
        return f"{who} wedged: no heartbeat for {slot.beat_age:.1f}s (bound {bound_s:g}s)"
    if st == "busy":
        return f"{who} busy: no heartbeat for {slot.beat_age:.1f}s (wedged past {bound_s:g}s)"
    if st == "starting":
        return f"{who} starting{after}"
    if st == "restarting":
        return f"worker {slot.index} restarting in {slot.restart_in or 0.0:.1f}s{after}"
    if st == "down":
        return f"{who} ended"
    return f"{who} up"


def healthz(slots: list[Slot], bound_s: float) -> tuple[int, str]:
    """200 while a worker is live (its process runs: up, busy, wedged or starting), else 503 (every slot
    down or waiting out a restart backoff); the first line counts them, one line follows for each worker
    not plainly up (which, and why)."""
    states = [state(s, bound_s) for s in slots]
    live = sum(1 for st in states if st in LIVE)
    lines = [describe(s, st, bound_s) for s, st in zip(slots, states, strict=True) if st != "up"]
    if live == 0:
        return 503, "\n".join(["no live worker", *lines])
    return 200, "\n".join([f"ok ({live}/{len(slots)} workers)", *lines])


def asked(slots: list[Slot], bound_s: float) -> list[bool]:
    """Which workers ``/readyz`` asks: those whose loop turns or is busy (a wedged, starting or ended one
    is not ready, and asking it would only wait out the bound)."""
    return [state(s, bound_s) in ("up", "busy") for s in slots]


def readyz(
    slots: list[Slot], answers: list[int | None], last_ready: list[bool], bound_s: float, need: int
) -> tuple[int, str]:
    """200 while at least ``need`` workers are ready. A worker asked that answered is ready on a 200; one
    whose admin port refused or dropped the connection (``REFUSED``) is not (its process is gone or going,
    however fresh its last heartbeat); one that did not answer in time (``None``) while its heartbeat is
    within the wedge bound (up or busy) counts as its last answer (``last_ready``); the others are not
    ready. The first line counts them (``ready (K/N workers)`` / ``K/N workers ready, M needed``), one line
    follows for each worker not plainly up or not answering."""
    ready = 0
    lines: list[str] = []
    for s, got, last in zip(slots, answers, last_ready, strict=True):
        st = state(s, bound_s)
        if st in ("up", "busy") and got == REFUSED:
            ok = False
            lines.append(f"worker {s.index} (pid {s.pid}) not ready: its admin port refused the connection")
        elif st in ("up", "busy") and got is not None:
            ok = got == 200
            if st == "busy":
                lines.append(describe(s, st, bound_s))
            elif not ok:
                lines.append(f"worker {s.index} (pid {s.pid}) not ready ({got})")
        elif st in ("up", "busy"):
            ok = last
            lines.append(
                f"worker {s.index} (pid {s.pid}) busy: no answer in time, heartbeat {s.beat_age:.1f}s old; "
                f"counted as its last answer ({'ready' if last else 'not ready'})"
            )
        else:
            ok = False
            lines.append(describe(s, st, bound_s))
        ready += ok
    if ready < need:
        return 503, "\n".join([f"{ready}/{len(slots)} workers ready, {need} needed", *lines])
    return 200, "\n".join([f"ready ({ready}/{len(slots)} workers)", *lines])
