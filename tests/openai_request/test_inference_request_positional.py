"""``inference_request`` builds its ``InferenceRequest`` positionally (session 24b: ~1 us a request less than
by keywords): every field must land where the keyword form put it. A guard, not a fix: passes on main too.

The keyword form below is main's (b10fb7c4) as it was; a field added to, removed from or moved within
``InferenceRequest`` fails ``test_field_order`` until the positional call is brought in step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from kvgate.openai.request import (
    CHAT,
    COMPLETIONS,
    DEFAULT_FAIRNESS_ID,
    ParsedBody,
    RequestPolicy,
    inference_request,
    parse_body,
)
from kvgate.scheduling.types import InferenceRequest

POSITIONAL = [
    "request_id",
    "model",
    "prompt_text",
    "prompt_tokens",
    "token_ids",
    "max_tokens",
    "sequences",
    "stream",
    "lora_adapter",
    "session_key",
    "priority",
    "fairness_id",
    "subset",
    "headers",
    "arrival_time",
    "subset_soft",
    "client_model",
    "body_bytes",
]


def test_field_order() -> None:
    names = [f.name for f in dataclasses.fields(InferenceRequest)]
    assert names[: len(POSITIONAL)] == POSITIONAL
    # (the rest keep their defaults: the positional call passes only these)
    assert all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(InferenceRequest)[len(POSITIONAL) :]
    )


def _by_keywords(parsed: ParsedBody, **kw: Any) -> InferenceRequest:
    """Main's ``inference_request`` body (keywords), the yardstick."""
    policy: RequestPolicy = kw["policy"]
    model, session, objective = kw["model"], kw.get("session"), kw.get("objective")
    headers = kw.get("headers")
    return InferenceRequest(
        request_id=kw["request_id"],
        model=model,
        prompt_text=parsed.prompt_text,
        prompt_tokens=parsed.prompt_tokens,
        token_ids=parsed.token_ids,
        max_tokens=parsed.max_tokens,
        sequences=parsed.sequences,
        stream=parsed.stream,
        lora_adapter=model if model in policy.adapters else None,
        session_key=session or parsed.user or None,
        priority=policy.objectives.get(objective, 0) if objective else 0,
        fairness_id=kw.get("fairness") or DEFAULT_FAIRNESS_ID,
        subset=kw.get("subset"),
        headers=headers if headers is not None else {},
        arrival_time=kw.get("arrival_time", 0.0),
        client_model=parsed.model if parsed.model != model else "",
        body_bytes=parsed.body_bytes,
    )


def test_every_field_as_by_keywords() -> None:
    bodies = [
        (COMPLETIONS, {"model": "m", "prompt": "hello there", "max_tokens": 8}),
        (COMPLETIONS, {"model": "base", "prompt": [1, 2, 3], "n": 2, "stream": True, "user": "u1"}),
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5}),
    ]
    policy = RequestPolicy(adapters=frozenset({"lora-a"}), objectives={"crit": 7, "shed": -1})
    variants: list[dict[str, Any]] = [
        {"request_id": "r1", "model": "m", "policy": RequestPolicy()},
        {
            "request_id": "r2",
            "model": "lora-a",
            "policy": policy,
            "session": "s",
            "objective": "crit",
            "fairness": "tenant",
            "subset": frozenset({"10.0.0.1:8000"}),
            "headers": {"x-a": "1"},
            "arrival_time": 12.5,
        },
        {"request_id": "r3", "model": "other", "policy": policy, "objective": "shed", "fairness": ""},
    ]
    for kind, body in bodies:
        parsed = parse_body(kind, orjson.dumps(body))
        for kw in variants:
            got, want = inference_request(parsed, **kw), _by_keywords(parsed, **kw)
            assert got == want
            for name in POSITIONAL:
                assert type(getattr(got, name)) is type(getattr(want, name)), name
