"""What a front door hands the picker, what it gets back, and the typed errors it maps to statuses.

Nothing here knows about HTTP or gRPC: the gateway, the ext_proc server and the virtual-clock fleet
simulator all build an ``InferenceRequest`` and call the same scheduler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(slots=True)
class InferenceRequest:
    request_id: str
    # Model name the endpoint will see (after any rewrite); may be a LoRA adapter name.
    model: str
    # Text that prefix matching hashes: completions -> the prompt; chat -> the JSON of ``messages``.
    prompt_text: str = ""
    # Estimated prompt tokens (len(prompt_text) / 4 unless a tokenizer gave an exact count; every prompt of
    # a batch; a chat's media parts at ``openai.request.MEDIA_PART_TOKENS`` each).
    prompt_tokens: int = 0
    # Exact token ids when known (precise prefix matching needs them); None otherwise. A list from a
    # request body, an ``array('I')`` from the scorers' tokenizer (``scheduling.tokenize``): never mutated.
    token_ids: Sequence[int] | None = None
    max_tokens: int | None = None
    # Sequences the server runs for it (vLLM's running and waiting counts count each): ``n`` choices x the
    # prompts of a completions batch. The in-flight accounting weighs the request by it (slots, decode).
    sequences: int = 1
    # The client asked for a streamed response (its first byte is then its first token, a TTFT).
    stream: bool = False
    # Set when ``model`` names a LoRA adapter rather than a base model.
    lora_adapter: str | None = None
    session_key: str | None = None
    # InferenceObjective semantics: unset = 0, higher = more important, negative = sheddable.
    priority: int = 0
    fairness_id: str = "default-flow"
    # Subset hint from the gateway (envoy.lb.subset_hint): only these addresses are eligible.
    subset: frozenset[str] | None = None
    # Request headers (lower-case names) for plugins that read them, e.g. the conformance filter.
    headers: Mapping[str, str] = field(default_factory=dict)
    # Set by the front door from the clock when the request arrived.
    arrival_time: float = 0.0
    # ``subset`` is a preference, not a hint to honour (kvgate serve's Responses follow-up pinned to its
    # home): when none of its addresses is in the pool at the pick (the home left it by a reload or
    # discovery while the request was queued), the pick drops it and picks the request as any other, as it
    # would have been had it arrived then (review s19-qa L4). A home in the pool but not ready keeps it: the
    # request waits for it (review s19-fixes-b I1). Only the pick changes it, never a gate's check.
    subset_soft: bool = False
    # The model name the client sent, where a rewrite changed it to ``model`` ("": ``model`` itself): flow
    # control's ``model_name`` label (``target_model_name`` is ``model``).
    client_model: str = ""
    # The body's length as received (bytes; 0 where no body came, e.g. a simulated request): what flow
    # control's ``maxBytes`` counts, as GIE's ``ByteSize()`` (``RequestSize = len(body)``).
    body_bytes: int = 0
    # A Responses API request the server keeps (``store``): what the front door knows of its conversation
    # (``previous_response_id``'s earlier turn), and where the prefix scorer leaves this turn's blocks for
    # the next one (``Conversation``). None for any other request.
    conversation: Conversation | None = None

    @property
    def sheddable(self) -> bool:
        return self.priority < 0


@dataclass(slots=True)
class Conversation:
    """A Responses API turn's conversation. A follow-up sends only ``previous_response_id`` and its new
    input, but the server prefills the whole conversation: the door adds the earlier turn's tokens to the
    prompt estimate (``head_tokens``, in ``InferenceRequest.prompt_tokens`` already) and hands the prefix
    scorer that turn's block chain (``head``, keyed by ``chunk`` / ``by_ids`` / ``model`` as the scorer
    keyed it), which the scorer continues with this turn's own blocks, so the follow-up matches the
    endpoint holding the conversation. The scorer leaves the chain it recorded in ``chain`` (with its
    ``chain_chunk`` / ``chain_by_ids``), which the door keeps for the next turn once this one's id
    (``response_id``) and its usage are known."""

    head_tokens: int = 0
    head: Sequence[int] = ()
    chunk: int = 0
    by_ids: bool = False
    model: str = ""
    chain: Sequence[int] = ()
    chain_chunk: int = 0
    chain_by_ids: bool = False
    response_id: str | None = None
    # This turn's own head (its tools and ``instructions``: the first ``lead_chars`` of its prompt text,
    # ~``lead_tokens`` of its estimate, ``lead_key`` their hash, 0 for none): vLLM 0.32 prefills a
    # follow-up as its own head, then the conversation without any earlier head, so the kept turn leaves
    # it out and ``head`` is handed only when the heads agree (then the earlier chain is a prefix).
    lead_chars: int = 0
    lead_tokens: int = 0
    lead_key: int = 0
    # False: a follow-up sent with ``store: false`` (vLLM stores neither its messages nor its response,
    # so no later turn can name it): its turn is not kept.
    stored: bool = True


def prompt_tokens(req_tokens: int, text: str, token_ids: Sequence[int] | None) -> int:
    """A request's prompt size in tokens for load accounting: the estimate, else the ids, else text/4."""
    if req_tokens > 0:
        return req_tokens
    if token_ids:
        return len(token_ids)
    return max(1, len(text) // 4)


@dataclass(slots=True)
class Usage:
    """What a finished request really cost (OpenAI ``usage``); any field may be 0 when unknown."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # True when the engine reported ``cached_tokens`` (``prompt_tokens_details``): 0 then means none
    # cached, not unknown.
    cached_reported: bool = False
    # Of ``completion_tokens``, the reasoning ones (Responses ``output_tokens_details.reasoning_tokens``):
    # a Responses follow-up does not carry them (``kvgate.openai.responses.finished_turn``).
    reasoning_tokens: int = 0

    @property
    def cached_share(self) -> float | None:
        """The share of the prompt the engine reported cached; None when it reported none."""
        if not self.cached_reported or self.prompt_tokens <= 0:
            return None
        return self.cached_tokens / self.prompt_tokens


@dataclass(slots=True)
class PickResult:
    """The chosen endpoints, best first (several = a fallback list), and how they were chosen."""

    endpoints: list[Any]  # list[kvgate.datalayer.endpoint.Endpoint]
    profile: str = "default"
    # Per-profile candidates, plugin scores and weights, and the winner; see scheduling docs.
    explanation: dict[str, Any] = field(default_factory=dict)
    # The pick's own time (``Director.pick``'s timer; 0.0 where none timed it): a front door whose pick ran
    # elsewhere (flow control's dispatcher) times it from this (qa32b Q6).
    seconds: float = 0.0

    @property
    def primary(self) -> Any:
        return self.endpoints[0]


class SchedulingError(Exception):
    """Base of the picker's typed errors; ``status`` is the HTTP status a front door answers."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retry_after: ClassVar[str | None] = None  # a ``Retry-After`` for the answer (seconds), where one is known

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(SchedulingError):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid_request_error"


class ModelNotFoundError(SchedulingError):
    status: ClassVar[int] = 404
    code: ClassVar[str] = "model_not_found"


class ShedError(SchedulingError):
    """A sheddable request arrived while the pool is saturated (or flow control rejected it)."""

    status: ClassVar[int] = 429
    code: ClassVar[str] = "rate_limit_exceeded"


class PredictedMissError(ShedError):
    """A sheddable request no endpoint is predicted to serve within its SLO (429 when shed; flow
    control with ``holdPredictedMisses`` holds it in the queue instead)."""


class NoCapacityError(SchedulingError):
    """No endpoint is eligible (none ready, all filtered, subset empty, queue TTL expired)."""

    status: ClassVar[int] = 503
    code: ClassVar[str] = "service_unavailable"


class PoolBusyError(SchedulingError):
    """A filter that drops full endpoints (``Filter.full_when_empty``) left none: every candidate is at
    its bound, retry later (429, as GIE's director answers its scheduler's error:
    ``InferencePoolResourceExhausted``; review s23-rev-fixqa23 R4)."""

    status: ClassVar[int] = 429
    code: ClassVar[str] = "rate_limit_exceeded"


class DrainEvictedError(NoCapacityError):
    """``kvgate serve``'s drain deadline passed while flow control still held the request in its queue: it
    leaves it (``EvictedOther``, the reference's outcome of a queue evicted at shutdown) and is never sent
    to a model server: 503 with ``Retry-After`` (and ``Connection: close``, as every answer of a draining
    gateway): it never ran anywhere, so it is safe to retry, at another replica."""

    retry_after = "1"


class QueueTimeoutError(SchedulingError):
    """The request's own deadline (``requestTimeoutSeconds``) passed while flow control held it in its
    queue (before the queue's TTL): 504, as Envoy answers a request whose route timeout ends while it
    waits for a connection."""

    status: ClassVar[int] = 504
    code: ClassVar[str] = "request_timeout"
