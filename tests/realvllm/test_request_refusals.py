"""#16: every Responses / Anthropic body ``parse_body`` refuses, vLLM's own request models refuse too
(``ResponsesRequest``, ``AnthropicMessagesRequest``, validated in the vLLM CPU venv): kvgate's 400 is never
an answer the server would not have given. Seeded shapes of ``input``, ``instructions``, ``system``,
``messages`` and the other top-level keys kvgate reads (``_TOP_KEYS``).
Needs the vLLM venv (``scripts/realvllm.sh``), not the servers: in the ``realvllm`` suite (``make
test-realvllm``, CI), skipped without the venv."""

from __future__ import annotations

import random
import subprocess
from typing import Any

import orjson
import pytest

from kvgate import lifeline
from kvgate.openai.request import BodyError, kind_for_path, parse_body
from kvgate.realvllm import harness

pytestmark = pytest.mark.realvllm

RESPONSES, MESSAGES = kind_for_path("/v1/responses"), kind_for_path("/v1/messages")
_TYPES = ["message", "function_call", "function_call_output", "reasoning", "input_text", "zz", None]
_PARTS = ["input_text", "output_text", "input_image", "input_file", "text", "image", "zz"]

CHECK = """
import json, sys
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest
out = []
for kind, body in json.load(sys.stdin):
    model = ResponsesRequest if kind == "responses" else AnthropicMessagesRequest
    try:
        req = model.model_validate(body)
        # (its serving's SamplingParams then refuses a limit under 1: "max_tokens must be at least 1")
        out.append(kind != "responses" or req.max_output_tokens is None or req.max_output_tokens >= 1)
    except Exception:
        out.append(False)
print(json.dumps(out))
"""


def _scalar(rng: random.Random) -> Any:
    return rng.choice([None, True, 0, 3, -1, 1.5, "", "hi", [], {}, ["x"], {"k": 1}])


def _part(rng: random.Random) -> Any:
    if rng.random() < 0.15:
        return _scalar(rng)
    part: dict[str, Any] = {"type": rng.choice(_PARTS)}
    for key in rng.sample(["text", "image_url", "file_data", "refusal", "source"], rng.randrange(3)):
        part[key] = rng.choice(["t", "data:image/png;base64,AAAA", _scalar(rng)])
    return part


def _item(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return _scalar(rng)
    item: dict[str, Any] = {}
    if (t := rng.choice(_TYPES)) is not None:
        item["type"] = t
    for key in rng.sample(["role", "content", "call_id", "name", "arguments", "output", "summary", "id"], 4):
        if key == "role":
            item[key] = rng.choice(["user", "assistant", "system", "developer", _scalar(rng)])
        elif key in ("content", "output", "summary"):
            item[key] = rng.choice(["text", [_part(rng) for _ in range(rng.randrange(3))], _scalar(rng)])
        else:
            item[key] = rng.choice(["c1", "{}", _scalar(rng)])
    return item


# The other top-level keys kvgate reads, each API's own or another's (review s22-resp F3: a fuzz that
# fixed them never drew a chat key on /v1/responses, which kvgate refused and vLLM ignores). Not
# ``stream``, nor a boolean value: a non-bool ``stream`` and a boolean limit are kvgate's deliberate 400s
# (vLLM's lax pydantic takes ``"yes"`` / ``true``: tests/openai_request/test_shared_bodies.py,
# test_request.py::test_other_non_integers_stay_refused).
_TOP_KEYS = ["max_tokens", "max_completion_tokens", "max_output_tokens", "user", "stream_options", "n"]


def _top_keys(rng: random.Random, body: dict[str, Any]) -> dict[str, Any]:
    for key in rng.sample(_TOP_KEYS, rng.randrange(3)):
        body[key] = rng.choice([4, 4.0, 0, -1, 1.5, "u", None, [], {"include_usage": True}, {"k": 1}])
    return body


def _bodies(n: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(22)
    out: list[tuple[str, dict[str, Any]]] = []
    for _ in range(n):
        items = rng.choice(["hi", [_item(rng) for _ in range(rng.randrange(4))], _scalar(rng)])
        body: dict[str, Any] = {"model": "m", "input": items}
        if rng.random() < 0.5:
            body["instructions"] = rng.choice(["be brief", _scalar(rng)])
        out.append((RESPONSES, _top_keys(rng, body)))
        system = rng.choice(["be brief", [_part(rng) for _ in range(rng.randrange(3))], _scalar(rng)])
        msgs = rng.choice([[{"role": "user", "content": "hi"}], [], [_item(rng)], _scalar(rng)])
        body = {"model": "m", "max_tokens": 4, "messages": msgs, "system": system}
        out.append((MESSAGES, _top_keys(rng, body)))
    return out


def test_what_kvgate_refuses_vllm_refuses() -> None:
    if not harness.is_installed():
        pytest.skip("the vLLM venv is not installed (scripts/realvllm.sh)")
    bodies = _bodies(1500)
    refused = []
    for kind, body in bodies:
        try:
            parse_body(kind, orjson.dumps(body))
            refused.append(False)
        except BodyError:
            refused.append(True)
    assert sum(refused) > 100  # (the shapes reach the refusals at all)
    wire = orjson.dumps([["responses" if k == RESPONSES else "messages", b] for k, b in bodies])
    argv = lifeline.die_with_parent_argv([str(harness.vllm_python()), "-c", CHECK])
    done = subprocess.run(argv, input=wire, capture_output=True, timeout=300, check=True)
    taken = orjson.loads(done.stdout.splitlines()[-1])
    wrong = [b for b, r, t in zip(bodies, refused, taken, strict=True) if r and t]
    assert not wrong, wrong[:5]
