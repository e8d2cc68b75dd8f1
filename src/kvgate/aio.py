"""Background tasks (``kvgate.k8s.tasks`` re-exports these; this module imports no kvgate package, so every
package may use it): stopping one (cancel it, wait for it, and say if it had ended on an error of its own
or did not end when cancelled), waiting for a cleanup that a cancellation does not cut (bounded), a stop
that runs to its end when its caller is cancelled, and a loop's bounded wait for its wake-up event that
a cancellation always ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar, cast

T = TypeVar("T")

# A task still running this long after it was cancelled swallowed the cancellation (every loop stopped
# so ends at its next await): said, and cancelled again, rather than waited for forever; after
# ``RECANCELS`` more cancels it is abandoned (left running, said), so a stop takes at most
# ``(RECANCELS + 1) x STUCK_S`` on it.
STUCK_S = 5.0
RECANCELS = 2


async def cancel_and_wait(
    task: asyncio.Task[Any],
    what: str,
    log: logging.Logger,
    stuck_s: float = STUCK_S,
    *,
    ends_within_s: float = 0.0,
) -> None:
    """Cancel ``task`` and wait until it ended. An exception it ended with on its own (a bug) is logged,
    not raised: the caller's stop goes on with the rest. The caller's own cancellation is not swallowed
    (``asyncio.wait`` raises it; the rounds below go on without the caller, in a task kept referenced,
    so a task that swallowed its one cancel is still cancelled again and said; ``await task`` inside
    ``suppress(CancelledError)`` would not: a cancel of the caller landing while it waits, or in the turn
    the task ends, is caught there as if it were the task's). A task still running ``stuck_s`` after the
    cancel (it swallowed it: Python 3.11's ``asyncio.wait_for`` does, see ``wait_event``) is logged by
    ``what`` and cancelled again, each ``stuck_s``, at most ``RECANCELS`` times; one still running then
    (it swallows every cancel) is logged as abandoned and left running: the stop never waits more than
    ``(RECANCELS + 1) x stuck_s`` on it. (A re-cancel can cut a cleanup the task was running under the
    first cancel, at its next await: the tasks stopped so have none that takes seconds.) A task whose
    cleanup under the cancel does take a while, itself bounded and not cut by further cancels
    (``finish_shielded``), passes that bound as ``ends_within_s``: it is judged stuck only once that
    passed (the first wait is ``max(stuck_s, ends_within_s)``), so the stop waits at most
    ``max(stuck_s, ends_within_s) + RECANCELS x stuck_s`` on it. A task cancelled while it awaits a
    ``stop_to_the_end`` stop has not swallowed its cancel (it raises it once that stop ended): it is
    waited for, up to that stop's limit, and not said or re-cancelled (review s12-hard L5). A task that
    ended on a ``KeyboardInterrupt`` or ``SystemExit`` is not logged: that interrupt already propagated
    as itself, out of the event loop as the task ended (``_failed``)."""
    await _cancel_and_wait([(task, what)], log, stuck_s, ends_within_s)


async def cancel_all_and_wait(
    tasks: Iterable[asyncio.Task[Any]], what: str, log: logging.Logger, stuck_s: float = STUCK_S
) -> None:
    """``cancel_and_wait`` for several tasks at once: all cancelled first, then waited for together (the
    bound is not multiplied by their number); each logged as ``what`` and its task name."""
    await _cancel_and_wait([(t, f"{what} {t.get_name()!r}") for t in tasks], log, stuck_s)


async def _cancel_and_wait(
    named: list[tuple[asyncio.Task[Any], str]], log: logging.Logger, stuck_s: float, ends_within_s: float = 0
) -> None:
    for task, _ in named:
        task.cancel()
    state = _Rounds(named)
    try:
        await _rounds(state, log, stuck_s, ends_within_s)
    except asyncio.CancelledError:
        # The caller's own cancel: raised. What is still running got one cancel, which it may swallow (the
        # case the rounds are for): the rounds go on without the caller, in a task kept referenced (review
        # s11-hard L2), so it is still cancelled again and said, or abandoned and said.
        if [t for t, _ in state.running if not t.done()]:
            rest = asyncio.get_running_loop().create_task(_rounds(state, log, stuck_s, ends_within_s))
            _LEFT_RUNNING.add(rest)
            rest.add_done_callback(_LEFT_RUNNING.discard)
        raise


class _Rounds:
    """Where ``_rounds`` stands: the tasks, those still running, the round it is in."""

    __slots__ = ("named", "round", "running")

    def __init__(self, named: list[tuple[asyncio.Task[Any], str]]) -> None:
        self.named = named
        self.running = named
        self.round = 0


async def _rounds(state: _Rounds, log: logging.Logger, stuck_s: float, ends_within_s: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        if not (running := [(t, w) for t, w in state.running if not t.done()]):
            break
        state.running = running
        # A task parked in a stop that runs to its end (``stop_to_the_end``, its cancel received) has not
        # swallowed it: it raises it once that stop ended, within the stop's own limit. Waited for till
        # then, not said, not re-cancelled (review s12-hard L5).
        if all(t in _FINISHING for t, _ in running):
            until = max(_FINISHING[t] for t, _ in running)
            await asyncio.wait([t for t, _ in running], timeout=max(0.05, until - loop.time()))
            continue
        if state.round > RECANCELS:
            break
        n = state.round
        waited = max(stuck_s, ends_within_s) if n == 0 else stuck_s
        await asyncio.wait([t for t, _ in running], timeout=waited)  # raises the caller's cancel
        if not (running := [(t, w) for t, w in running if not t.done()]):
            break
        state.running = running
        if not (stuck := [(t, w) for t, w in running if t not in _FINISHING]):
            continue
        state.round += 1
        for task, what in stuck:
            if n == RECANCELS:
                log.error("%s did not end %.1fs after it was cancelled %d times (it swallows every "
                          "cancellation); abandoned, left running", what, waited, n + 1)  # fmt: skip
            else:
                log.error("%s did not end %.1fs after it was cancelled (the cancellation was swallowed); "
                          "cancelling it again", what, waited)  # fmt: skip
                task.cancel()
    for task, what in state.named:
        # (an interrupt it ended on is retrieved, not logged: it already left the event loop, ``_failed``)
        if task.done() and not task.cancelled() and _failed(exc := task.exception()):
            log.error("%s had stopped: %r", what, exc, exc_info=exc)


def _failed(exc: BaseException | None) -> bool:
    """Whether a task's error is a failure to log: an ``Exception``. A ``KeyboardInterrupt`` or
    ``SystemExit`` (any ``BaseException`` but an ``Exception`` or a cancellation) that a task ended on is
    not: asyncio raised it out of the event loop as the task ended (``Task.__step``), so it already
    propagated as itself (``asyncio.run`` raises it once its end cancelled the other tasks); raising it
    again from the stop that waits for the task would leave the loop a second time, cutting that
    cancellation of the other tasks (their stops)."""
    return isinstance(exc, Exception)


# Cleanups run by ``finish_shielded`` that their waiter gave up on: kept referenced until they end.
_LEFT_RUNNING: set[asyncio.Task[Any]] = set()


async def finish_shielded(task: asyncio.Task[Any], what: str, log: logging.Logger, limit_s: float) -> None:
    """Wait until ``task`` (a cleanup: a ``finally``'s work, run as a task of its own) ended, at most
    ``limit_s``, even when this waiter is cancelled meanwhile: a cleanup running under one cancellation
    is not cut by the next (``cancel_and_wait`` re-cancels a task that is slow to end). A cancellation
    received while waiting is raised once the task ended or ``limit_s`` passed; a task still running then
    is logged by ``what`` and left to finish on its own. An error it ended on is logged, not raised; a
    ``KeyboardInterrupt`` or ``SystemExit`` is not logged: it already propagated as itself (``_failed``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, limit_s)
    cancelled = False
    while not task.done() and (left := deadline - loop.time()) > 0:
        try:
            await asyncio.wait([task], timeout=left)  # (asyncio.wait never cancels the task it waits for)
        except asyncio.CancelledError:
            cancelled = True
    if not task.done():
        log.error("%s still running %.1fs after it started; left to finish on its own", what, limit_s)
        _LEFT_RUNNING.add(task)
        task.add_done_callback(_LEFT_RUNNING.discard)
    elif not task.cancelled() and _failed(exc := task.exception()):
        log.error("%s failed: %r", what, exc, exc_info=exc)
    if cancelled:
        raise asyncio.CancelledError


# How long a stop whose caller was cancelled goes on (``stop_to_the_end``): past the bound of one step of a
# stop (a task stopped with ``cancel_and_wait``: 15 s; the hub controller's 55 s), not of every stop: one
# that stops several such tasks one after another (``GatewayServer._stop``: its pools, scrapers and
# KV-event subscribers, 15 s each when each swallows its cancels) can pass it; it is then said and left
# to finish on its own (review s12-hard L6).
STOP_LIMIT_S = 60.0
# The tasks cancelled while they await a ``stop_to_the_end`` stop: when that stop's limit ends.
_FINISHING: weakref.WeakKeyDictionary[asyncio.Task[Any], float] = weakref.WeakKeyDictionary()


async def stop_to_the_end(
    cleanup: Coroutine[Any, Any, T],
    what: str,
    log: logging.Logger,
    limit_s: float = STOP_LIMIT_S,
    *,
    on_cancel: Callable[[], object] | None = None,
) -> T:
    """Run a stop (``cleanup``) to its end even when its caller is cancelled meanwhile, then raise that
    cancellation: a cancelled stop does not skip the rest of its cleanup (the listeners, sockets,
    sessions, a Lease), which no later stop might come to do. The stop runs as a task of its own that
    the caller's cancellations do not reach; without one this is ``await cleanup``, its result or error
    included. Once the caller was cancelled the stop gets ``limit_s`` more to end (further cancels
    change nothing); one still running then is logged by ``what`` and left to finish on its own, and the
    cancellation raised. An error the stop ended on after a cancel is logged, the cancellation raised.
    A ``KeyboardInterrupt`` or ``SystemExit`` (any ``BaseException`` but an ``Exception`` or a
    cancellation: a second Ctrl-C under ``asyncio.run`` may land in the stop running after the first,
    when it comes while the stop's code runs; usually the loop waits in its selector then, the interrupt
    leaves ``run_until_complete`` directly and ``asyncio.run``'s end cancels the stop's task) ends the
    stop where it was raised, as it would in ``await cleanup`` (its ``finally`` blocks run), and is
    raised here as itself, cancelled or not, and not logged: the stop's task catches it and hands it over
    (a task ending on one would raise it out of the event loop at once, and the caller a second time,
    cutting ``asyncio.run``'s cancellation of the other tasks). A stop whose caller no longer waits (left
    running past ``limit_s``, or the caller ended on an exception of its own) raises it itself: it is not
    lost. ``on_cancel`` is called once, at the caller's first cancellation (a stop that has a faster way
    to its end once its caller is in a hurry: ``kvgate.bench.procs.Proc.stop`` sends SIGKILL at once
    rather than waiting out the grace of its SIGTERM); an ``Exception`` it raises is logged and changes
    nothing else (the stop runs on as without it, the cancellation raised as above)."""
    loop = asyncio.get_running_loop()
    waited = [True]  # (False once the caller left the stop running: no one to hand an interrupt to)
    task = loop.create_task(_handed_over(cleanup, waited), name=what)
    me = asyncio.current_task()
    outer = None if me is None else _FINISHING.get(me)  # (a stop within a stop: the outer one's limit)
    cancelled = False
    deadline = 0.0
    try:
        while not task.done():
            timeout = None
            if cancelled and (timeout := deadline - loop.time()) <= 0:
                break
            try:
                await asyncio.wait([task], timeout=timeout)  # (asyncio.wait never cancels what it waits for)
            except asyncio.CancelledError:
                if not cancelled:
                    cancelled, deadline = True, loop.time() + max(0.0, limit_s)
                    if on_cancel is not None:
                        try:
                            on_cancel()
                        except Exception:  # (the stop goes on, the cancellation stays: review s15-hard I1)
                            log.exception("%s: its on_cancel hook failed", what)
                    if me is not None:  # (``cancel_and_wait`` waits for it till then: not stuck)
                        _FINISHING[me] = deadline
    finally:
        if me is not None and outer is not None:
            _FINISHING[me] = outer
        elif me is not None:
            _FINISHING.pop(me, None)
        if not task.done():
            waited[0] = False
    if not cancelled:
        result, interrupt = task.result()
        if interrupt is not None:
            raise interrupt
        return cast(T, result)  # (None only with an interrupt)
    if not task.done():
        log.error("%s still running %.1fs after its caller was cancelled; left to finish on its own",
                  what, limit_s)  # fmt: skip
        _LEFT_RUNNING.add(task)
        task.add_done_callback(_LEFT_RUNNING.discard)
    elif not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed: %r", what, exc, exc_info=exc)
    elif not task.cancelled() and (interrupt := task.result()[1]) is not None:
        raise interrupt
    raise asyncio.CancelledError


async def _handed_over(
    cleanup: Coroutine[Any, Any, T], waited: list[bool]
) -> tuple[T | None, BaseException | None]:
    """``cleanup``'s result, or the ``KeyboardInterrupt`` / ``SystemExit`` it ended on (any
    ``BaseException`` but an ``Exception``, a cancellation or a ``GeneratorExit``), returned rather than
    raised while ``waited[0]`` (its caller waits for it): a task raises such an exception out of its
    event loop as well (``stop_to_the_end``)."""
    try:
        return await cleanup, None
    except BaseException as exc:
        if isinstance(exc, (Exception, asyncio.CancelledError, GeneratorExit)) or not waited[0]:
            raise
        return None, exc


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` passed; whether it is set. A loop's wake-up wait:
    not ``asyncio.wait_for(event.wait(), ...)``, which on Python 3.11 returns the result instead of
    raising when the task is cancelled just as the event is set (CPython gh-86296, fixed in 3.12): the
    loop then goes on, and a stop waiting for it hangs forever. ``asyncio.timeout`` tells its own expiry
    from a cancellation."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout_s)):
            await event.wait()
    return event.is_set()


def serve_on_sighup(loop: asyncio.AbstractEventLoop, log: logging.Logger, what: str) -> None:
    """SIGHUP where there is no file to reload (``what``: the process, and why): one WARNING line a
    signal, the process serves on. Its default action ends the process at once, with no drain, every
    request in flight cut: an operator's ``kill -HUP`` (the reload of ``kvgate serve --config``) or a
    config-reloader sidecar signalling every process of a pod must never take a gateway down (review
    s20-qa L5). The process ignores SIGHUP from its start (``signal.SIG_IGN``) until this handler is in."""
    loop.add_signal_handler(
        signal.SIGHUP, lambda: log.warning("SIGHUP: %s has nothing to reload; serving on", what)
    )
