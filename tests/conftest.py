"""Shared test configuration."""

from __future__ import annotations

import asyncio
import os
import selectors
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# --- Hypothesis: the same examples on every run unless asked for fresh ones -----------------------------
# Fresh random examples could find a new counterexample in any CI run and refuse a submission that changed
# nothing near it (38 test files use hypothesis). "gate", loaded here by default (so `make test`, `.ci/run`
# and land.sh): derandomized (the seed is a hash of the test function, stable for the pinned hypothesis and
# Python), which implies no example database; no deadline and no too_slow health check (both depend on the
# machine's load). "fuzz" (`make fuzz`, `KVGATE_HYPOTHESIS_PROFILE=fuzz` or `--hypothesis-profile=fuzz`):
# fresh random examples each run, a failure printed with its @reproduce_failure blob and kept in
# .hypothesis/ to replay. Both start from hypothesis' "default" profile, not from whichever it loaded on
# seeing a CI variable. A test's own @settings still win for what they name (mostly max_examples).
_HYPOTHESIS_COMMON: dict[str, Any] = {
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow],
}
settings.register_profile("gate", settings.get_profile("default"), derandomize=True, **_HYPOTHESIS_COMMON)
settings.register_profile("fuzz", settings.get_profile("default"), derandomize=False, **_HYPOTHESIS_COMMON)
settings.load_profile(os.environ.get("KVGATE_HYPOTHESIS_PROFILE", "gate"))

# --- A traceback entry with no line number must not end the whole run ---------------------------------
# CPython 3.11+ gives ``tb_lineno``/``f_lineno`` None when the instruction that raised has no line (compiler-
# generated code: cleanups, RESUME). pytest 9.2 subtracts 1 from it while formatting a failure and stops the
# session with an INTERNALERROR that names neither the test nor its error (session 33's cc4: 5504 tests run,
# 470 never). Such an entry is shown at its frame's first line instead.
from _pytest._code import code as _pytest_code  # noqa: E402


def _line_or_first(lineno: int | None, frame: Any) -> int:
    if isinstance(lineno, int) and lineno > 0:
        return lineno
    return int(frame.f_code.co_firstlineno)


_pytest_code.TracebackEntry.lineno = property(  # type: ignore[method-assign,assignment]
    lambda self: _line_or_first(self._rawentry.tb_lineno, self._rawentry.tb_frame) - 1
)
_pytest_code.Frame.lineno = property(  # type: ignore[method-assign,assignment]
    lambda self: _line_or_first(self.raw.f_lineno, self.raw) - 1
)

# --- No earlier test's ``tokenizer: auto`` look-up lands in this test's tokenizer caches ---------------
# (tests swap ``tokenize._BY_MODEL`` / ``_BY_PATH`` or count tokenizer loads: a look-up still queued on the
# loader thread would add an entry or a load there; review s30-rev-b30 F4.) Import-light and cheap: read
# from ``sys.modules`` (no import, no thread started), a wait only where the loader thread exists.


@pytest.fixture(autouse=True)
def _no_tokenizer_look_up_left_running() -> None:
    tokenize = sys.modules.get("kvgate.scheduling.tokenize")
    if tokenize is not None and getattr(tokenize, "_LOADER", None) is not None:
        tokenize.wait_loads(60)


# --- A bench's reaper belongs in a bench's own process (rev-ci33) ----------------------------------------
# ``kvgate.bench.reaper.install()`` (and ``sigwake.install()``, which it calls) set process-wide state that
# nothing resets: an asyncio event loop policy (every later test's loop a ``WakingLoop``), a child
# subreaper, a watchdog process, SIGTERM/SIGHUP handlers and an atexit reap. Tests run it in a subprocess.


@pytest.fixture(autouse=True)
def _no_bench_reaper_in_this_process() -> Iterator[None]:
    yield
    reaper, sigwake = sys.modules.get("kvgate.bench.reaper"), sys.modules.get("kvgate.bench.sigwake")
    assert reaper is None or not reaper._installed, "reaper.install() ran in the pytest process"
    if sigwake is not None and isinstance(asyncio.get_event_loop_policy(), sigwake._Policy):
        asyncio.set_event_loop_policy(None)  # (the next tests get the default loop again)
        pytest.fail("sigwake.install() ran in the pytest process: its event loop policy left set")


# --- A stop cancelled while it waits for a background task to end must raise the cancellation ----------
# (``with suppress(CancelledError): await task`` after ``task.cancel()`` swallowed it: a cancel of the
# stopping coroutine, landing while it waited or in the turn the task ended, was caught as the task's own.)


class SlowToEnd:
    """A background task that, once cancelled, winds down until ``release()`` (a further cancel cuts it)."""

    def __init__(self) -> None:
        self.winding = asyncio.Event()
        self._released = asyncio.Event()
        self.task: asyncio.Task[None] = asyncio.create_task(self._run(), name="slow-to-end")

    async def _run(self) -> None:
        try:
            await asyncio.Event().wait()  # (until cancelled)
        except asyncio.CancelledError:
            self.winding.set()
            await self._released.wait()
            raise

    def release(self) -> None:
        self._released.set()


Plant = Callable[[asyncio.Task[Any]], None]
StopCheck = Callable[..., Awaitable[None]]


@pytest.fixture
def stop_raises_a_cancel() -> StopCheck:
    """``await check(plant, stop, when)``: a ``SlowToEnd`` task is handed to ``plant`` (which puts it where
    the object keeps its background task), ``stop()`` runs as a task until it cancelled that task, then
    the stopping task is cancelled ``when`` = ``"waiting"`` (while the task winds down) or ``"as it
    ends"`` (in the turn the task ended, before the stop resumed): the stop must end cancelled. With
    ``closed`` (a predicate on the object), every resource of it must be closed by then: a cancelled stop
    does not skip the rest of its cleanup (session 12). The task must have ended by the time the stop
    ended: a cancelled stop does not raise while what it stops still winds down (session 13)."""

    async def check(
        plant: Plant,
        stop: Callable[[], Awaitable[Any]],
        when: str,
        closed: Callable[[], object] | None = None,
    ) -> None:
        slow = SlowToEnd()
        stopper: asyncio.Task[Any] | None = None
        try:
            plant(slow.task)
            await asyncio.sleep(0)
            stopper = asyncio.create_task(stop())
            task_ended_first: list[bool] = []
            stopper.add_done_callback(lambda _: task_ended_first.append(slow.task.done()))
            winding = asyncio.ensure_future(slow.winding.wait())
            await asyncio.wait([stopper, winding], timeout=10, return_when=asyncio.FIRST_COMPLETED)
            winding.cancel()  # (a stop that failed first: its error is the message, not a 10 s wait)
            assert slow.winding.is_set(), f"the stop did not cancel its task (10 s): {_outcome(stopper)}"
            if when == "waiting":
                assert not stopper.done(), f"the stop ended before its task: {_outcome(stopper)}"
                stopper.cancel()
                for _ in range(5):  # (the cancel lands while the task winds down)
                    await asyncio.sleep(0)
                # A stop runs to its end before it raises the cancel (``kvgate.aio.stop_to_the_end``): it
                # waits for the task, which ends once released.
                slow.release()
                await asyncio.wait([stopper], timeout=10)
            else:
                assert when == "as it ends"
                slow.release()
                for _ in range(1000):  # (turn by turn: the stop must not resume first; bounded: see below)
                    if slow.task.done():
                        break
                    await asyncio.sleep(0)
                assert slow.task.done(), "the released task did not end within 1000 loop turns"
                assert not stopper.done(), f"the stop resumed before it was cancelled: {_outcome(stopper)}"
                stopper.cancel()
                await asyncio.wait([stopper], timeout=10)
            await asyncio.wait([slow.task], timeout=10)
            assert stopper.done(), "the stop did not end within 10 s of its cancel"
            assert stopper.cancelled(), f"the stop swallowed its caller's cancel: {_outcome(stopper)}"
            assert task_ended_first == [True], "the stop raised its cancel while its task still ran"
            if closed is not None:
                assert closed(), "a cancelled stop left a resource open"
        finally:
            # (whatever failed above: a task still winding down, or a stop still waiting for it, would
            # hang the event loop's teardown past pytest's timeout instead of failing; session 27's cc2)
            slow.release()
            slow.task.cancel()
            if stopper is not None and not stopper.done():
                stopper.cancel()
            await asyncio.wait([t for t in (slow.task, stopper) if t is not None], timeout=10)

    return check


def _outcome(task: asyncio.Task[Any]) -> str:
    """A stop task's state for a failure message (its error retrieved: not logged as never retrieved)."""
    if not task.done() or task.cancelled():
        return repr(task)
    return f"it raised {task.exception()!r}" if task.exception() is not None else "it returned"


# --- An event loop on a virtual clock --------------------------------------------------------------------


class _VirtualSelector(selectors.SelectSelector):
    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0:
            self._clock[0] += timeout  # (nothing to do until the next timer: jump to it)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock: when nothing is ready, its clock jumps to the next timer."""

    def __init__(self) -> None:
        self._vclock = [1000.0]
        super().__init__(_VirtualSelector(self._vclock))

    def time(self) -> float:
        return self._vclock[0]


@pytest.fixture
def run_virtual() -> Callable[[Callable[[], Awaitable[Any]]], Any]:
    """``run_virtual(main)``: run ``main()`` to its end on a ``VirtualTimeLoop`` (a sync test's own loop):
    timeouts, sleeps and ``asyncio.wait`` budgets of tens of seconds take no wall time, and no figure
    depends on the machine's load."""

    def run(main: Callable[[], Awaitable[Any]]) -> Any:
        loop = VirtualTimeLoop()
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()

    return run
