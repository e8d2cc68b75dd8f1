"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

A candidate reads the Lease; it takes it when nobody holds it or when the holder's record has not
changed for ``lease_duration_s`` *as this candidate observed it on its own clock* (no cross-node clock
comparison); the holder renews every ``retry_period_s`` and steps down when it cannot renew within
``renew_deadline_s`` of its last renewal: the whole attempt (the read and the write, and any retries) is
bounded by that instant, so a leader never acts past ``renew_deadline_s`` after its last renewal while a
standby waits ``lease_duration_s`` (> ``renew_deadline_s``) from when it last saw the record change.
Writes carry the read ``resourceVersion``, so two candidates racing for an expired Lease cannot both win
(one gets 409). A clean stop releases the Lease (empty holder) so a standby takes
over at its next try instead of after the full duration.

Time is injected, as everywhere in kvgate: ``clock`` (now) and ``sleep`` (a wait on that clock) drive every
interval (the retry period, the renew deadline that bounds an attempt, the lease duration), so a test moves
time itself instead of sleeping. The two must be one time: both given or neither (``check_one_time``;
the defaults: the event loop's).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from kvgate.aio import stop_to_the_end
from kvgate.k8s import resources as R
from kvgate.k8s.client import KubeClient, KubeError
from kvgate.k8s.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# How a round fails and is retried: a refusal or conflict, the connection dropped, a timeout, a 2xx whose
# body is not JSON (ValueError: orjson.JSONDecodeError). A leader that cannot confirm its renewal within
# the renew deadline steps down, whatever the reason.
_FAILED = (KubeError, aiohttp.ClientError, OSError, TimeoutError, ValueError)


def _micro_time(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_one_time(clock: object | None, sleep: object | None) -> None:
    """``clock`` and ``sleep`` are one time: both given or neither (the defaults: ``time.monotonic`` and
    ``asyncio.sleep``, the event loop's). One alone would bound the renew deadline on another time than
    the one it is measured on (review s15-k8s F5): ``ValueError``."""
    if (clock is None) != (sleep is None):
        given, missing = ("clock", "sleep") if sleep is None else ("sleep", "clock")
        raise ValueError(f"{given}= without {missing}=: give both (one time) or neither")


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        *,
        name: str,
        namespace: str,
        identity: str,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_change: Callable[[bool], None] | None = None,
        on_refused: Callable[[bool], None] | None = None,
    ) -> None:
        self.client, self.name, self.namespace, self.identity = client, name, namespace, identity
        self.lease_duration_s, self.renew_deadline_s = lease_duration_s, renew_deadline_s
        self.retry_period_s = retry_period_s
        check_one_time(clock, sleep)
        self.clock, self.sleep = clock or time.monotonic, sleep or asyncio.sleep
        self.wall, self.on_change = wall, on_change
        # Whether the last round was refused with 403 (RBAC without leases): ``on_refused`` when it flips.
        self.refused = False
        self.on_refused = on_refused
        self.is_leader = False
        self.holder: str | None = None
        self.error: str | None = None
        self.transitions = 0  # times this candidate became leader
        self.rounds = 0  # rounds tried (each then waits ``retry_period_s`` or less on ``sleep``)
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._died = False  # the election loop ended on an error nobody foresaw (the Lease may be ours)

    @property
    def path(self) -> str:
        return R.LEASE.item_path(self.namespace, self.name)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"leader election {self.name}")

    async def stop(self, release: bool = True) -> None:
        """Stop electing and (``release``) give the Lease up; whatever the election loop raised, and
        also when this stop is cancelled (``stop_to_the_end``: the cancellation is raised after)."""
        await stop_to_the_end(self._stop(release), f"lease {self.namespace}/{self.name}: stopping", log)

    async def _stop(self, release: bool) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await cancel_and_wait(task, f"lease {self.namespace}/{self.name}: the election loop", log)
        if release and (self.is_leader or self._died):
            with contextlib.suppress(*_FAILED):
                await self._release()
        self._set_leader(False)

    def dead(self) -> str | None:
        """Why the election loop ended on its own (a bug), or None while it runs (or was stopped)."""
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            return f"leader election stopped: {task.exception()!r}"
        return None

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            if leader:
                self.transitions += 1
            log.info("lease %s/%s: %s is %s", self.namespace, self.name, self.identity,
                     "the leader" if leader else "not the leader")  # fmt: skip
            if self.on_change is not None:
                self.on_change(leader)

    def _set_refused(self, refused: bool) -> None:
        if refused != self.refused:
            self.refused = refused
            if self.on_refused is not None:
                self.on_refused(refused)

    def leads(self) -> bool:
        """Whether this candidate may act as the leader now: it holds the Lease and its renew deadline
        has not passed (the election loop steps down by then, but a loop held up must not stretch it)."""
        return self.is_leader and self._renew_left() > 0

    def _renew_left(self) -> float:
        """Seconds a leader has left to renew (its last renewal + ``renew_deadline_s``), on ``clock``.
        Each attempt's bound is this many seconds from now, waited for with ``sleep`` (``_bounded``)."""
        return self._renewed_at + self.renew_deadline_s - self.clock()

    async def _bounded(self, bound: asyncio.Timeout, seconds: float) -> bool:
        """One round (``try_acquire_or_renew``), ended once ``sleep(seconds)`` returns: ``bound`` (entered
        with no deadline of its own) is then expired at once, so the round is cancelled and ``TimeoutError``
        raised as with ``asyncio.timeout``, and ``bound.expired()`` tells it from a cancellation of the
        caller. The deadline is kept on the injected time, not the loop's."""
        live = True

        async def expire() -> None:
            await self.sleep(max(0.0, seconds))
            if live:  # (the round may have ended in the same turn: the bound is left then)
                bound.reschedule(asyncio.get_running_loop().time())

        timer = asyncio.create_task(expire(), name=f"lease {self.namespace}/{self.name}: renew deadline")
        try:
            async with bound:
                return await self.try_acquire_or_renew()
        finally:
            live = False
            timer.cancel()

    async def run(self) -> None:
        try:
            await self._run()
        except Exception:
            # Ended on an error nobody foresaw: no renewal any more, so no acting as the leader either
            # (a standby takes over after the lease duration); stop() still releases the Lease.
            self._died = self._died or self.is_leader
            self._set_leader(False)
            raise

    async def _run(self) -> None:
        while True:
            pause = self.retry_period_s
            # A leader's attempt ends at its renew deadline (client-go bounds the renewal the same way);
            # a candidate's after one renew deadline.
            bound = asyncio.timeout(None)
            try:
                leads = await self._bounded(
                    bound, self._renew_left() if self.is_leader else self.renew_deadline_s
                )
                self._set_leader(leads)
                self.error = None
                self._set_refused(False)
            except _FAILED as e:
                self._set_refused(isinstance(e, KubeError) and e.status == 403)
                msg = "renew deadline passed" if bound.expired() else f"{type(e).__name__}: {e}"
                if msg != self.error:
                    log.warning("lease %s/%s: %s", self.namespace, self.name, msg)
                self.error = msg
                if self.is_leader:
                    left = self._renew_left()
                    if bound.expired() or left <= 0:
                        log.warning("lease %s/%s: could not renew within %.1fs; stepping down",
                                    self.namespace, self.name, self.renew_deadline_s)  # fmt: skip
                        self._set_leader(False)
                    else:
                        pause = min(pause, left)  # retry, and step down on time, not a period late
            self.rounds += 1
            await self.sleep(pause)

    def _spec(self, transitions: int, acquire: str | None = None) -> dict[str, Any]:
        now = _micro_time(self.wall())
        return {
            "holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.lease_duration_s)),
            "acquireTime": acquire or now, "renewTime": now, "leaseTransitions": transitions,
        }  # fmt: skip

    async def try_acquire_or_renew(self) -> bool:
        """One round: True when this candidate holds the Lease afterwards."""
        try:
            # (bounded by the round, ``_bounded``, on ``sleep``; the request's own 30 s timeout is the
            # backstop, on real time, whatever ``sleep`` is)
            lease = await self.client.request("GET", self.path)
        except KubeError as e:
            if e.status != 404:
                raise
            meta = {"name": self.name, "namespace": self.namespace}
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": meta,
                "spec": self._spec(0),
            }
            sent = self.clock()
            try:
                await self.client.request("POST", R.LEASE.collection_path(self.namespace), body=body)
            except KubeError as e2:
                if e2.status == 409:  # another candidate created it first
                    return False
                raise
            self._renewed_at = sent
            self.holder = self.identity
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = self.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        self.holder = holder
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # held by someone else and still fresh as we observed it
        transitions = int(spec.get("leaseTransitions") or 0)
        mine = holder == self.identity
        # The deadline runs from the send: a standby may see the new record as soon as the server stores
        # it and times its takeover from then; a slow answer must not stretch how long this one leads.
        sent = self.clock()
        lease["spec"] = self._spec(transitions if mine else transitions + 1,
                                   spec.get("acquireTime") if mine else None)  # fmt: skip
        try:
            updated = await self.client.request("PUT", self.path, body=lease)
        except KubeError as e:
            if e.status == 409:  # lost the race for it
                return False
            raise
        s2 = updated.get("spec") or {}
        self._observed = (s2.get("holderIdentity"), s2.get("renewTime"), s2.get("leaseTransitions"))
        self._observed_at, self._renewed_at = self.clock(), sent
        self.holder = self.identity
        return True

    async def _release(self) -> None:
        lease = await self.client.request("GET", self.path, timeout_s=2.0)
        if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"]["holderIdentity"] = ""
        lease["spec"]["leaseDurationSeconds"] = 1
        await self.client.request("PUT", self.path, body=lease, timeout_s=2.0)
        log.info("lease %s/%s: released by %s", self.namespace, self.name, self.identity)
