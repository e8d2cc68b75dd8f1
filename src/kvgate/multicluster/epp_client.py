"""Endpoint mode: a cluster's EPP (Envoy ext_proc, FULL_DUPLEX_STREAMED) picks the pod and follows the
request to its end, as it would behind Envoy.

The global gateway plays Envoy's part of one ``Process`` stream for the request's whole life:

1. request headers and body; the EPP answers with its header mutation (``x-gateway-destination-endpoint``,
   control headers stripped) and the body back (rewritten when it rewrote the model), or with an
   ImmediateResponse (an error status). The pod gets the mutated headers and body, as through Envoy;
2. the pod's response headers (``:status``, content type, the served pod in ``envoy.lb`` metadata); the
   EPP's answer mutates the client's response headers;
3. the response body, in the processing mode the stream runs in (the declared FULL_DUPLEX_STREAMED,
   unless the EPP's ``mode_override`` asked for less). When the EPP changed the request body (a model
   rewrite) every chunk goes through it and the client gets what it returns (the model name put back),
   exactly as with Envoy; should that EPP fail mid-response, the pod's stream goes on to the client with
   the model name put back here (``_relay``). Otherwise the client's bytes go straight to it and the
   EPP gets only what its session reads: the body up to the first generated token (first-token and
   prefill accounting), then the stream's last bytes (``usage``) with end_of_stream, which ends its
   in-flight accounting; a JSON reply goes whole at the end (``usage``) when it is at most
   ``JSON_BYTES``;
4. the client leaving, the pod failing mid-way or a failover cancels the stream, which ends the
   request on the EPP (``Session.close``).

An EPP that stops answering without failing (a stalled process, a hung event loop) is failed by its
deadline (``timeout_s``, the clusters file's ``epp_timeout_s``): each message it must answer (the pick,
the response headers, a response line it owes the client once it has answered one (until then it may
be holding its answers for the end, as ext_proc allows), the end of the response) gets that long, and
one it does not answer (or a write it stops reading) raises ``EppStalled``, handled as a failure: the
pick moves on (Parent mode, the next cluster), a response goes on from the pod.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import functools
import logging
import math
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2

from kvgate.httpfront.budget import ByteBudget
from kvgate.multicluster.clusters import TlsOptions
from kvgate.multicluster.fetcher import CERT_CHECK_S, RECONNECT, Material, tls_material
from kvgate.openai.protocol import DESTINATION_ENDPOINT
from kvgate.openai.sse import LineEnds, SSEScanner, line_end, rewrite_model

log = logging.getLogger("kvgate.multicluster.epp")

_MODE = processing_mode_pb2.ProcessingMode
_PROTOCOL = pb.ProtocolConfiguration(
    request_body_mode=_MODE.FULL_DUPLEX_STREAMED, response_body_mode=_MODE.FULL_DUPLEX_STREAMED
)
_CHUNK = 62_000
# The most addresses of an EPP's destination list the gateway walks (the first and its fallbacks).
ADDRESSES_MAX = 4
# The end of a stream the EPP reads ``usage`` from (vLLM's usage event is the last before [DONE]).
TAIL_BYTES = 64 << 10
# A JSON reply up to this size goes to the EPP whole at the end (its ``usage``); a larger one, only the end.
JSON_BYTES = 1 << 20
_LINE_END = re.compile(rb"\r\n?|\n")  # one SSE line end (a CR at the ledger's end: its LF may follow)
# A stream silent towards the EPP this long gets an empty body message: the EPP cancels a stream with no
# message for its --stream-idle-timeout (600 s), which would end the request's accounting early.
KEEPALIVE_S = 60.0


def _is_address(entry: str) -> bool:
    """Whether a destination list's ``entry`` is a ``host:port`` (port 1..65535) a request can be sent to."""
    try:
        parts = urllib.parse.urlsplit(f"//{entry}")
        port = parts.port
    except ValueError:  # (a port out of range or not a number)
        return False
    named = bool(parts.hostname) and parts.netloc == entry and "@" not in entry
    return named and port is not None and port > 0


# Metadata Envoy sends with the response headers: the pod that actually served.
_LB, _SERVED = "envoy.lb", "x-gateway-destination-endpoint-served"
# The gateway's subset hint (GIE protocol, as Envoy's ``envoy.lb.subset_hint`` metadata): only these pods.
_SUBSET_NS, _SUBSET = "envoy.lb.subset_hint", "x-gateway-destination-endpoint-subset"
RELAY_CHUNKS = 64  # EPP-rewritten chunks buffered for a slow client (then back-pressure)
# The pod's bytes an EPP rewriting the response has not answered for yet, kept so the response can go on
# without that EPP should it fail (a streamed reply holds a line or two; a JSON reply, all of it).
LEDGER_BYTES = 4 << 20
# All requests' ledgers together hold at most this much (many large JSON replies at once): a request
# whose ledger would go past it drops its ledger, as one over ``LEDGER_BYTES`` does (no fallback).
LEDGER_BUDGET_BYTES = 64 << 20


LEDGERS = ByteBudget(LEDGER_BUDGET_BYTES)  # the pod bytes all open relays' ledgers hold

# How an EPP stream fails under us: the RPC ended, a deadline passed, or the call was already done.
STREAM_FAILED = (grpc.aio.AioRpcError, TimeoutError, asyncio.InvalidStateError)
_T = TypeVar("_T")
# Streams waiting (in the background) for the EPP's answer to their end of stream: held, not collected.
_SETTLING: set[asyncio.Task[None]] = set()


def _headers(headers: Mapping[str, str]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k.lower(), raw_value=v.encode()) for k, v in headers.items()]
    )


def _value(h: base_pb2.HeaderValue) -> str:
    return h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value


@dataclass(slots=True)
class Mutation:
    """One HeadersResponse's header mutation."""

    sets: dict[str, str] = field(default_factory=dict)
    removes: tuple[str, ...] = ()

    @classmethod
    def of(cls, common: pb.CommonResponse) -> Mutation:
        hm = common.header_mutation
        sets = {h.header.key.lower(): _value(h.header) for h in hm.set_headers}
        return cls(sets, tuple(k.lower() for k in hm.remove_headers))

    def apply(self, headers: Mapping[str, str], drop: frozenset[str] = frozenset()) -> dict[str, str]:
        gone = set(self.removes) | drop
        out = {k: v for k, v in headers.items() if k.lower() not in gone and k.lower() not in self.sets}
        out.update((k, v) for k, v in self.sets.items() if k not in drop)
        return out


class EppStalled(TimeoutError):
    """The EPP did not answer (or stopped reading) within its deadline; ``phase``: ``pick``,
    ``response_headers`` or ``response_body``. A TimeoutError, so it fails like one."""

    def __init__(self, phase: str, timeout_s: float) -> None:
        super().__init__(f"the EPP stopped answering ({phase}, {timeout_s:g} s)")
        self.phase = phase


# The longest delay a Retry-After may ask for (seconds): a cluster's larger value (a misconfigured
# delta-seconds, an HTTP date years away) is capped to this, so no cluster sends clients away for longer.
RETRY_AFTER_MAX_S = 3600


def retry_after_s(value: str | None) -> int | None:
    """A Retry-After header's delay in whole seconds (delta-seconds or an HTTP date), at most
    ``RETRY_AFTER_MAX_S``; None if absent or unreadable. Never raises: only ASCII digits are read as
    delta-seconds (``str.isdigit`` also takes digits ``int`` refuses), and a value longer than any HTTP
    date is unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # (More than 10 digits is past the cap whatever they say: no int() of a 5,000-digit string.)
        return RETRY_AFTER_MAX_S if len(value.lstrip("0")) > 10 else min(int(value), RETRY_AFTER_MAX_S)
    if len(value) > 64:  # an HTTP date is 29 characters
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            return None
        return min(RETRY_AFTER_MAX_S, max(0, math.ceil(when.timestamp() - time.time())))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class EppImmediate(Exception):
    """The EPP answered the response headers with an ImmediateResponse (e.g. a preempted request)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the EPP answered {status}")
        self.status = status


class EppStream:
    """One request's open ext_proc stream, after the pick. ``address`` is None when the EPP refused
    (``status``) or named no pod; the stream is already closed then."""

    def __init__(
        self,
        call: grpc.aio.StreamStreamCall | None,
        *,
        timeout_s: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        ledgers: ByteBudget = LEDGERS,
        address: str | None = None,
        status: int | None = None,
        on_stall: Callable[[str], None] | None = None,
    ) -> None:
        self._call = call
        self.timeout_s = timeout_s
        self.clock = clock  # the response deadline's time (``_relay``), with ``sleep``
        self.sleep = sleep
        self.ledgers = ledgers
        self.address = address
        # The EPP's fallback addresses after ``address`` (its ``x-gateway-destination-endpoint`` list), in
        # its order: tried when ``address`` cannot be connected to (``GlobalRouter._send``).
        self.alternates: tuple[str, ...] = ()
        self.status = status
        # The EPP's refusal (``status``): its error body and Retry-After, passed on to the client.
        self.error: bytes | None = None
        self.retry_after: int | None = None
        self.request_mutation = Mutation()
        self.body: bytes = b""  # the body to send the pod (the EPP's, when it streamed one back)
        self.rewritten = False  # the EPP changed the request body: the response goes through it
        self.send_response_headers = True  # the EPP's mode_override may say SKIP
        self.send_response_body = True  # ... or response_body_mode NONE
        self._reader: asyncio.Task[None] | None = None
        self._out: asyncio.Queue[bytes | BaseException | None] | None = None
        self._last_write = clock()
        self.ended = False  # end_of_stream reached the EPP: it closed the request's accounting
        self.client_model: str | None = None  # the model the client asked for (put back without the EPP)
        self.fell_back = False  # the EPP failed mid-response and the pod's stream went on without it
        self.broken = False  # the EPP failed at the response headers: the body goes on without it
        self.stalled: str | None = None  # the phase in which the EPP stopped answering (``EppStalled``)
        self.on_stall = on_stall  # told that phase once, when it happens (the gateway counts it)

    # ---- the pick ---------------------------------------------------------------------------------
    def _stall(self, phase: str) -> EppStalled:
        """Record the stall (the first one of this stream is the one counted) and make its exception."""
        if self.stalled is None:
            self.stalled = phase
            if self.on_stall is not None:
                self.on_stall(phase)
        return EppStalled(phase, self.timeout_s)

    async def _within(self, step: Awaitable[_T], phase: str) -> _T:
        """One step the EPP must complete within its deadline (answer, or take a write), else a stall."""
        try:  # (not wait_for, which on Python 3.11 returns the step's result and drops a cancel landing
            # as it completes, CPython gh-86296: a request whose client left went on; asyncio.timeout)
            async with asyncio.timeout(self.timeout_s):
                return await step
        except TimeoutError:
            raise self._stall(phase) from None

    async def _read(self, phase: str) -> pb.ProcessingResponse | None:
        assert self._call is not None
        msg = await self._within(self._call.read(), phase)
        return None if msg is grpc.aio.EOF else msg

    async def _write(self, msg: pb.ProcessingRequest, phase: str) -> None:
        assert self._call is not None
        await self._within(self._call.write(msg), phase)  # (gRPC flow control: it may stop reading)
        self._last_write = self.clock()

    async def _pick(
        self, path: str, headers: Mapping[str, str], body: bytes, subset: tuple[str, ...] | None = None
    ) -> None:
        first = pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(
                headers=_headers({":method": "POST", ":path": path, **headers}), end_of_stream=False
            )
        )
        first.protocol_config.CopyFrom(_PROTOCOL)
        if subset is not None:  # (the pick among these pods only: the EPP's subset filter)
            hint = struct_pb2.Struct()
            hint.update({_SUBSET: list(subset)})
            first.metadata_context.filter_metadata[_SUBSET_NS].CopyFrom(hint)
        await self._write(first, "pick")
        pieces = [body[i : i + _CHUNK] for i in range(0, len(body), _CHUNK)] or [b""]
        for i, piece in enumerate(pieces):
            chunk = pb.HttpBody(body=piece, end_of_stream=i == len(pieces) - 1)
            await self._write(pb.ProcessingRequest(request_body=chunk), "pick")
        self.body = body
        parts: list[bytes] = []
        picked = False
        while True:
            msg = await self._read("pick")
            if msg is None:  # the EPP ended the stream without a pick
                break
            kind = msg.WhichOneof("response")
            if kind == "immediate_response":
                imm = msg.immediate_response
                self.status = int(imm.status.code)
                self.error = imm.body or None
                for opt in imm.headers.set_headers:
                    if opt.header.key.lower() == "retry-after":
                        self.retry_after = retry_after_s(_value(opt.header))
                break
            if msg.HasField("mode_override"):
                self._override(msg.mode_override)
            if kind == "request_headers":
                self.request_mutation = Mutation.of(msg.request_headers.response)
                dest = self.request_mutation.sets.get(DESTINATION_ENDPOINT, "")
                # The first address, and the fallbacks after it (GIE proposal 004: "The first valid endpoint
                # in the list will be used", the next ones on the gateway's retries), the walk bounded; an
                # entry that is no ``host:port`` skipped (rev-g32 F4: it failed the cluster).
                listed = [a for a in (a.strip() for a in dest.split(",")) if _is_address(a)][:ADDRESSES_MAX]
                self.address = listed[0] if listed else None
                self.alternates = tuple(listed[1:])
                picked = True
                if self.address is None:
                    break
            elif kind == "request_body":
                streamed = msg.request_body.response.body_mutation.streamed_response
                parts.append(streamed.body)
                if streamed.end_of_stream:
                    break
            elif kind == "request_trailers" and picked:
                break
        if self.address is None:
            self.cancel()
            return
        if parts:
            sent = b"".join(parts)
            if sent != body:
                self.body, self.rewritten = sent, True

    def _override(self, mode: processing_mode_pb2.ProcessingMode) -> None:
        if mode.response_header_mode == _MODE.SKIP:
            self.send_response_headers = False
        if mode.response_body_mode == _MODE.NONE:
            self.send_response_body = False

    # ---- the response -----------------------------------------------------------------------------
    async def response_headers(self, status: int, headers: Mapping[str, str], served: str) -> Mutation:
        """Send the pod's response headers; the EPP's answer says how the client's headers change.
        Best effort: an EPP that fails (or stalls) here leaves the response alone, the stream cancelled
        and ``broken`` set: the body goes on from the pod (the model name put back here)."""
        if self._call is None or not self.send_response_headers:
            return Mutation()
        md = base_pb2.Metadata()
        s = struct_pb2.Struct()
        s.update({_SERVED: served})
        md.filter_metadata[_LB].CopyFrom(s)
        msg = pb.ProcessingRequest(
            response_headers=pb.HttpHeaders(headers=_headers({":status": str(status), **headers})),
            metadata_context=md,
        )
        try:
            await self._write(msg, "response_headers")
            while True:
                answer = await self._read("response_headers")
                if answer is not None and answer.WhichOneof("response") == "immediate_response":
                    # The EPP took the request back (flow control preempted it): Envoy would answer the
                    # client with this and reset the upstream; nothing reached the client yet here.
                    self.cancel()
                    raise EppImmediate(int(answer.immediate_response.status.code))
                if answer is None:
                    self.cancel()
                    return Mutation()
                if answer.HasField("mode_override") and answer.mode_override.response_body_mode == _MODE.NONE:
                    self.send_response_body = False
                if answer.WhichOneof("response") == "response_headers":
                    return Mutation.of(answer.response_headers.response)
        except asyncio.CancelledError:
            self.cancel()
            raise
        except STREAM_FAILED as e:
            log.warning("EPP stream failed at the response headers: %s", e or type(e).__name__)
            self.broken = True
            self.cancel()
            return Mutation()

    def body_through(self, upstream: AsyncIterator[bytes], *, streaming: bool) -> AsyncIterator[bytes]:
        """The client's body: the EPP's (a rewrite), or the pod's with the EPP told what it reads."""
        if self._call is None:
            return upstream
        if self.broken:
            # The EPP failed at the headers: nothing of the body goes through it (a cancelled call).
            self.fell_back = True
            if self.rewritten and self.send_response_body and self.client_model is not None:
                return self._from_pod(upstream, b"", streaming=streaming, given=False)
            return upstream
        if self.rewritten and self.send_response_body:
            return self._relay(upstream, streaming=streaming)
        return self._signals(upstream, streaming=streaming)

    async def _body(self, data: bytes, eos: bool) -> None:
        for i in range(0, max(len(data), 1), _CHUNK):
            piece = data[i : i + _CHUNK]
            last = i + _CHUNK >= len(data)
            chunk = pb.HttpBody(body=piece, end_of_stream=eos and last)
            await self._write(pb.ProcessingRequest(response_body=chunk), "response_body")

    async def _signals(self, upstream: AsyncIterator[bytes], *, streaming: bool) -> AsyncIterator[bytes]:
        assert self._call is not None
        self._reader = asyncio.get_running_loop().create_task(_drain(self._call))
        live = self.send_response_body
        scanner = SSEScanner() if streaming else None  # reads only up to the first generated token
        tail: collections.deque[bytes] = collections.deque()  # a stream's last bytes, or a JSON reply
        held = 0
        done = failed = False
        try:
            async for chunk in upstream:
                if live:
                    try:
                        if scanner is not None:
                            scanner.feed(chunk)
                            if scanner.saw_output:
                                scanner = None
                            await self._body(chunk, False)
                        else:
                            held += len(chunk)
                            if streaming or held <= JSON_BYTES:
                                tail.append(chunk)
                            else:
                                tail.clear()  # too large to hold for its usage
                            while streaming and held - len(tail[0]) >= TAIL_BYTES:
                                held -= len(tail.popleft())
                            if self.clock() - self._last_write > KEEPALIVE_S:
                                await self._body(b"", False)
                    except STREAM_FAILED as e:
                        log.warning("EPP stream failed mid-response: %s", e or type(e).__name__)
                        live, failed = False, True
                        self.fell_back = True  # the client's stream goes on; the EPP's accounting is lost
                        self.cancel()
                yield chunk
            done = True
        finally:
            if not done or failed:
                # The client left or the pod failed (the EPP releases the request), or the EPP's
                # stream failed mid-response (cancelled already; cancelling again is a no-op).
                self.cancel()
            elif not live:
                await self._end(None)  # response_body_mode NONE: the half-close is the end
            elif streaming:
                # A newline first ends any partial line the EPP's reader holds from the first chunks.
                last = b"".join(tail)[-TAIL_BYTES:]
                await self._end(b"\n" + last if last else b"")
            else:
                # A JSON reply whole (its usage), or nothing: cut, it would not parse.
                await self._end(b"".join(tail) if held <= JSON_BYTES else b"")

    async def _end(self, data: bytes | None) -> None:
        assert self._call is not None
        try:
            if data is not None:
                await self._body(data, True)
            self.ended = True
            await self._within(self._call.done_writing(), "response_body")  # (it may stop reading)
        except STREAM_FAILED as e:
            log.warning("EPP stream failed at the end of the response: %s", type(e).__name__)
            self.cancel()
            return
        # The EPP owes its answer to the end of stream, which is where its session closes the request's
        # accounting: it gets ``timeout_s`` for it, in the background (the client does not wait for it).
        # Only what the wait needs goes to it, not this object (the request body, the mutations): a
        # stalled EPP would otherwise keep them for the whole deadline.
        assert self._reader is not None
        on_stall = self.on_stall if self.stalled is None else None  # (a stream's first stall is counted)
        task = asyncio.get_running_loop().create_task(
            _end_answered(self._call, self._reader, self.sleep, self.timeout_s, on_stall)
        )
        _SETTLING.add(task)
        task.add_done_callback(_SETTLING.discard)

    async def _relay(self, upstream: AsyncIterator[bytes], *, streaming: bool) -> AsyncIterator[bytes]:
        """Full duplex: every pod chunk to the EPP, every EPP chunk to the client, until end_of_stream.

        Should the EPP fail mid-response, the pod's stream is intact: only the EPP's response processing
        is lost (Envoy with ``failure_mode_allow`` would pass the pod's bytes on as they are). The client's
        stream goes on from the pod, with the model name put back here instead of by the EPP, and nothing
        lost or repeated: the EPP's output reaches the client in whole lines only (its rewrite maps each
        pod line to one line), and the pod's bytes the EPP has not answered for are kept (``ledger``) to
        be sent on. A JSON reply is finished here when none of it had reached the client. Otherwise (a
        ledger over ``LEDGER_BYTES`` or past the shared ``ledgers`` budget, an EPP whose line count does
        not match), the stream is cut.

        An EPP that stops answering is failed the same way: from the moment it owes the client something
        (a complete pod line it has not answered, once it has answered one: before that it may be holding
        its answers for the end; a JSON reply's or a stream's end), it has ``timeout_s`` to answer
        (``watch``, on ``clock`` / ``sleep``); any answer restarts the clock while more is owed."""
        assert self._call is not None
        call = self._call
        out: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        # At most RELAY_CHUNKS of the EPP's chunks wait for a slow client: past that the reader stops
        # reading the EPP, and gRPC flow control holds back the EPP and, through it, the pod's pump.
        room = asyncio.Semaphore(RELAY_CHUNKS)
        ledger = bytearray()  # the pod's bytes sent to the EPP, from the first line it has not answered
        keep = self.client_model is not None  # False: no fallback (too much held, or lines do not match)
        given = False  # any of the EPP's bytes went to the client
        loop = asyncio.get_running_loop()
        clock, ledgers = self.clock, self.ledgers
        # Pod lines sent to the EPP and lines it answered (its rewrite maps one to one), and since when it
        # owes an answer (the deadline). A line ends with LF, CRLF or a lone CR, as the SSE spec reads it
        # (small35 b: counted and cut at LF only, a CR-only stream reached the client at its end).
        lines_out = lines_in = 0
        pod_ends, epp_ends, answered_ends = LineEnds(), LineEnds(), LineEnds()
        ledger_cr = False  # the ledger was last cut after a CR: an LF opening it is that CRLF's
        owed_since: float | None = None
        owing = asyncio.Event()

        def owes() -> bool:
            # ext_proc lets an EPP hold its answers (buffer, batch) up to the end of stream: a line's
            # deadline runs only once this one has answered a line (it answers as the lines come);
            # until then its write deadline (it stops reading) and the end of stream's hold.
            return self.ended or (streaming and lines_in > 0 and lines_out > lines_in)

        def mark() -> None:
            """The EPP owes from now (after a message sent, or an answer), or owes nothing."""
            nonlocal owed_since
            if owes():
                owed_since = clock()
                owing.set()
            else:
                owed_since = None

        async def pump() -> None:
            nonlocal lines_out
            try:
                async for chunk in upstream:
                    if keep:
                        if len(ledger) + len(chunk) > LEDGER_BYTES or not ledgers.take(len(chunk)):
                            drop()
                        else:
                            ledger.extend(chunk)
                    lines_out += pod_ends.count(chunk)  # (before the write: its answer may come first)
                    await self._body(chunk, False)
                    if streaming and owed_since is None:  # (already owed: the older line's deadline stands)
                        mark()
                await self._body(b"", True)
                self.ended = True
                if owed_since is None:
                    mark()
                await self._within(call.done_writing(), "response_body")
            except BaseException as e:  # the pod or the EPP failed
                out.put_nowait(e)
                raise

        async def watch() -> None:
            """Fail the stream with ``EppStalled`` when the EPP owes an answer past its deadline."""
            nonlocal owed_since
            while True:
                if owed_since is None:
                    owing.clear()
                    await owing.wait()
                    continue
                if room.locked():  # the reader waits for the client, not for the EPP
                    owed_since = clock()
                left = owed_since + self.timeout_s - clock()
                if left <= 0:
                    out.put_nowait(self._stall("response_body"))
                    return
                await self.sleep(left)

        def drop() -> None:
            """No fallback for this response: its ledger goes (too large, or lines that do not match)."""
            nonlocal keep
            keep = False
            ledgers.give(len(ledger))
            ledger.clear()

        def answer(data: bytes) -> None:
            """The EPP's complete lines: the pod lines they stand for leave the ledger."""
            nonlocal ledger_cr
            n = answered_ends.count(data)
            if not keep:
                return
            if lines_in > lines_out:  # more lines than it was sent: not a line-for-line rewrite
                drop()
                return
            # An LF after the CR the last cut ended at is that line's, answered once the EPP answers on.
            cut = 1 if ledger_cr and ledger[:1] == b"\n" else 0
            ledger_cr = ledger_cr and not ledger
            for _ in range(n):
                found = _LINE_END.search(ledger, cut)
                if found is None:  # (not the lines it was sent)
                    drop()
                    return
                cut = found.end()
            if cut:
                ledger_cr = ledger[cut - 1] == 13  # (13: CR; its LF not in the ledger yet)
                del ledger[:cut]
                ledgers.give(cut)

        async def read() -> None:
            nonlocal lines_in
            held = bytearray()  # the EPP's output after its last newline, until the line completes
            try:
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        break
                    if msg.WhichOneof("response") != "response_body":
                        continue
                    streamed = msg.response_body.response.body_mutation.streamed_response
                    lines_in += epp_ends.count(streamed.body)
                    mark()  # it answered: what it still owes has a deadline from now
                    held.extend(streamed.body)
                    whole = len(held) if streamed.end_of_stream else line_end(held)
                    if whole:
                        data = bytes(held[:whole])
                        del held[:whole]
                        await room.acquire()
                        answer(data)  # (no await between: a cancel cannot fall between the two)
                        out.put_nowait(data)
                    if streamed.end_of_stream:
                        break
                if held:
                    out.put_nowait(bytes(held))
                out.put_nowait(None)
            except BaseException as e:
                out.put_nowait(e)
                raise

        writer, self._reader = loop.create_task(pump()), loop.create_task(read())
        watcher = loop.create_task(watch())
        done = False
        failure: BaseException | None = None
        try:
            while True:
                item = await out.get()
                if item is None:
                    done = True
                    break
                if isinstance(item, BaseException):
                    failure = item
                    break
                room.release()
                given = True
                yield item
        finally:
            watcher.cancel()
            if not done:
                writer.cancel()
                self.cancel()
            # The tasks waited for (``asyncio.wait`` raises a cancel of this relay, where awaiting each inside
            # ``suppress(BaseException)`` swallowed it: the fallback below then relayed for a client that had
            # gone); a failure they end on is retrieved, not logged as never retrieved.
            tasks = (writer, self._reader, watcher)
            for task in tasks:
                task.add_done_callback(_retrieve)
            try:
                await asyncio.wait(tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                self.cancel()
                raise
            finally:
                # The budget back (done, or the client left); a failure keeps the ledger for the fallback.
                if failure is None:
                    drop()
        if done:
            return
        rest, kept = bytes(ledger), keep
        drop()
        # Lines the EPP answered before the failure was seen, queued after it: they are the client's next.
        while not out.empty():
            item = out.get_nowait()
            if item is None:
                return  # the EPP had finished the response after all
            if isinstance(item, bytes):
                given = True
                yield item
        if not isinstance(failure, (grpc.aio.AioRpcError, TimeoutError)) or not kept:
            raise ConnectionResetError(f"stream through the EPP failed: {type(failure).__name__}")
        # The EPP failed, the pod did not: go on from the pod, putting the model name back here.
        log.warning("EPP stream failed mid-response (%s): the response goes on from the pod without it",
                    failure or type(failure).__name__)  # fmt: skip
        self.fell_back = True
        async for data in self._from_pod(upstream, rest, streaming=streaming, given=given):
            yield data

    async def _from_pod(
        self, upstream: AsyncIterator[bytes], rest: bytes, *, streaming: bool, given: bool
    ) -> AsyncIterator[bytes]:
        """The response without the EPP: ``rest`` (the pod's bytes it had not answered), then the pod's
        stream, the model name the client sent put back here. ``given``: part of it reached the client."""
        assert self.client_model is not None
        if streaming:
            scanner = SSEScanner(rewrite_to=self.client_model)
            if rest:
                yield scanner.feed(rest)
            async for chunk in upstream:
                data = scanner.feed(chunk)
                if data:
                    yield data
            tail = scanner.finish()
            if tail:
                yield tail
            return
        if given:
            raise ConnectionResetError("stream through the EPP failed after part of a JSON reply")
        # The reply is held whole to put the model back: at most LEDGER_BYTES, and taken from the budget
        # all relays share (many large replies at once must not pass it).
        parts: list[bytes] = []
        held = 0
        try:
            async for chunk in _prepend(rest, upstream):
                if held + len(chunk) > LEDGER_BYTES:
                    raise ConnectionResetError(
                        f"stream through the EPP failed; the JSON reply is over {LEDGER_BYTES >> 20} MiB, "
                        "too large to finish without it"
                    )
                if not self.ledgers.take(len(chunk)):
                    raise ConnectionResetError(
                        "stream through the EPP failed; the JSON reply cannot be finished without it: the "
                        f"relays' shared buffer budget ({self.ledgers.limit:,} bytes) is spent"
                    )
                held += len(chunk)
                parts.append(chunk)
            raw = b"".join(parts)
        finally:
            self.ledgers.give(held)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield raw  # not JSON (an error page): as the pod sent it
            return
        yield orjson.dumps(obj) if rewrite_model(obj, self.client_model) else raw

    def cancel(self) -> None:
        """End the stream now (the EPP's session closes and releases the request)."""
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _drain(call: grpc.aio.StreamStreamCall) -> None:
    """Read (and drop) the EPP's answers, so its writes never stall the stream; done at its answer to the
    end of stream (or when the stream ends). A free function: its task holds the call, not the stream."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        while (msg := await call.read()) is not grpc.aio.EOF:
            if msg.response_body.response.body_mutation.streamed_response.end_of_stream:
                return


async def _end_answered(
    call: grpc.aio.StreamStreamCall,
    reader: asyncio.Task[None],
    sleep: Callable[[float], Awaitable[None]],
    timeout_s: float,
    on_stall: Callable[[str], None] | None,
) -> None:
    """The EPP's answer to a stream's end, awaited in the background. One that reads the end of stream but
    never answers it is a stall: its stream is cancelled (ending the request there) by the deadline
    instead of lingering. Given the call and its reader only (not the ``EppStream`` and its body)."""
    deadline = asyncio.ensure_future(sleep(timeout_s))
    try:
        await asyncio.wait((reader, deadline), return_when=asyncio.FIRST_COMPLETED)
    finally:
        deadline.cancel()
    if not reader.done():
        if on_stall is not None:
            on_stall("response_body")
        log.warning("EPP did not answer the end of the response within %g s: stream cancelled", timeout_s)
        call.cancel()
        reader.cancel()
        return
    # It answered; should it not close the stream, the stream goes anyway.
    asyncio.get_running_loop().call_later(timeout_s * 5, call.cancel)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


# A TLS channel's files (CA, client pair) are re-read at most every CERT_CHECK_S: a rotated certificate (a
# Secret's new content) takes effect on the next request after that, without a restart.
# A retired channel (rotated files, a cluster gone from the clusters file) closes when its last stream
# ends; a stream still open after this long is cut (the EPP's 600 s idle sweeper ends only a silent stream
# it waits on, not one waiting for its answer's head: no bound of its own there).
RETIRE_GRACE_S = 900.0


@dataclass(eq=False, slots=True)
class _Channel:
    """One EPP channel, the TLS files it was built from, and its open streams (for a graceful close)."""

    channel: grpc.aio.Channel
    material: Material | None
    checked_at: float
    calls: set[grpc.aio.Call] = field(default_factory=set)
    retired: bool = False
    closing: bool = False
    timer: asyncio.TimerHandle | None = None


ChannelKey = tuple[str, TlsOptions | None]


class EppClient:
    """One gRPC channel per (EPP address, TLS options); ``open`` raises ``grpc.aio.AioRpcError`` /
    ``TimeoutError`` (``OSError`` for an unreadable certificate file).

    Channels follow their inputs: a TLS channel whose files' content changed (checked at most every
    ``cert_check_s``, and on the next use after ``retain``) is replaced, and ``retain`` (a clusters-file
    reload) retires the channels of EPPs no longer listed. A retired channel takes no new stream; it
    closes once its open streams end (they finish normally), at the latest after ``retire_grace_s``."""

    def __init__(
        self,
        *,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        ledgers: ByteBudget = LEDGERS,
        cert_check_s: float = CERT_CHECK_S,
        retire_grace_s: float = RETIRE_GRACE_S,
    ) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self.sleep = sleep  # with ``clock``: the response deadline's time (a test's fake clock)
        self.ledgers = ledgers
        self.cert_check_s = cert_check_s
        self.retire_grace_s = retire_grace_s
        self._channels: dict[ChannelKey, _Channel] = {}
        self._retired: set[_Channel] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self.rotations = 0  # channels replaced because their TLS files changed
        self.closed = 0  # retired channels closed

    def _channel(self, address: str, tls: TlsOptions | None) -> _Channel:
        key = (address, tls)
        ch = self._channels.get(key)
        now = self.clock()
        if ch is not None and tls is not None and now - ch.checked_at >= self.cert_check_s:
            ch.checked_at = now
            try:
                material = tls_material(tls)
            except OSError as e:  # mid-rotation (a file missing for a moment): keep the working channel
                log.warning("EPP %s: TLS files not readable, keeping the current channel: %s", address, e)
            else:
                if material != ch.material:
                    log.info("EPP %s: TLS files changed; new streams use them, open ones finish", address)
                    self.rotations += 1
                    self._retire(key)
                    ch = None
        if ch is None:
            fresh: Material | None = None
            if tls is None:
                channel = grpc.aio.insecure_channel(address, options=RECONNECT)
            else:
                fresh = tls_material(tls)
                ca, key_pem, cert = fresh
                creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key_pem,
                                                     certificate_chain=cert)  # fmt: skip
                channel = grpc.aio.secure_channel(address, creds, options=RECONNECT)
            ch = self._channels[key] = _Channel(channel, fresh, now)
        return ch

    def retain(self, keep: set[ChannelKey]) -> None:
        """After a clusters-file reload: retire the channels of EPPs not in ``keep``, and re-read the
        TLS files of the others on their next use (a reload is a moment files are likely rotated)."""
        for key in [k for k in self._channels if k not in keep]:
            log.info("EPP %s: no longer in the clusters file; its channel closes after its streams", key[0])
            self._retire(key)
        for ch in self._channels.values():
            ch.checked_at = float("-inf")

    def _retire(self, key: ChannelKey) -> None:
        ch = self._channels.pop(key)
        ch.retired = True
        if not ch.calls:
            self._close(ch)
            return
        self._retired.add(ch)
        ch.timer = asyncio.get_running_loop().call_later(self.retire_grace_s, self._close, ch)

    def _call_done(self, ch: _Channel, call: grpc.aio.Call) -> None:
        ch.calls.discard(call)
        if ch.retired and not ch.calls:
            self._close(ch)

    def _close(self, ch: _Channel) -> None:
        if ch.closing:
            return
        ch.closing = True
        self._retired.discard(ch)
        if ch.timer is not None:
            ch.timer.cancel()
        self.closed += 1
        task = asyncio.get_running_loop().create_task(ch.channel.close())  # cuts what is still open
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def open(self, address: str, path: str, headers: Mapping[str, str], body: bytes, *,
                   tls: TlsOptions | None = None, timeout_s: float | None = None,
                   on_stall: Callable[[str], None] | None = None,
                   subset: tuple[str, ...] | None = None) -> EppStream:  # fmt: skip
        """Ask for a pod; the returned stream stays open for the request's life (``address`` set), or
        is closed already (the EPP refused: ``status``). ``tls``: None = plaintext, else verify the EPP
        against ``tls.ca`` (the system CAs without one) and present ``tls.cert`` / ``tls.key`` (mTLS).
        ``timeout_s``: the EPP's deadline for each answer (default: the client's); raises ``EppStalled``
        when the pick misses it. ``on_stall(phase)``: called once if this stream's EPP stalls, whenever
        that is (the end of a response is awaited after the client has it). ``subset``: the pods the
        EPP may pick (the GIE subset hint, ``envoy.lb.subset_hint``); None: any."""
        ch = self._channel(address, tls)
        # No deadline on the call itself: it lives as long as the response. Each step has its own.
        call = pb_grpc.ExternalProcessorStub(ch.channel).Process()
        ch.calls.add(call)
        call.add_done_callback(functools.partial(self._call_done, ch))
        stream = EppStream(call, timeout_s=timeout_s or self.timeout_s, clock=self.clock, sleep=self.sleep,
                           ledgers=self.ledgers, on_stall=on_stall)  # fmt: skip
        try:
            await stream._pick(path, headers, body, subset)
        except BaseException:
            stream.cancel()
            raise
        return stream

    async def close(self) -> None:
        for ch in [*self._channels.values(), *self._retired]:
            self._close(ch)
        self._channels.clear()
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task
