"""s17-bigbody: a relayed (> whole_max) non-streamed answer whose ``usage`` is not in its last 16 KiB.

vLLM's ChatCompletionResponse puts ``prompt_logprobs`` (and ``prompt_token_ids``) AFTER ``usage``
(vllm/entrypoints/openai/chat_completion/protocol.py:142-146 in the installed vLLM). A chat request
with ``prompt_logprobs`` on a long prompt is exactly the "big answer" s17-qa H1 named; its usage is then
MiBs before the end, ``usage_from_tail`` finds none: the answer is not counted in the token metrics nor
charged to the tenant's ``tokensPerMinute`` (a client can opt out of its token rate limit by asking for
prompt_logprobs). Run: cd /work/main && PYTHONPATH=src:tests .venv/bin/python -m pytest -c pyproject.toml -q
/work/team/reviews/s17-bigbody-tests/test_bigbody_usage_not_last.py
"""

from __future__ import annotations

from gateway.conftest import make_config, running_gateway
from gateway.test_big_json_answer import RawServer, post


def vllm_chat_body(n_prompt_tokens: int) -> bytes:
    # vLLM's field order: ..., "usage", then "prompt_logprobs" (one dict per prompt token), ...
    plp = b",".join(
        b'{"%d":{"logprob":-1.25,"rank":1,"decoded_token":"tok"}}' % (1000 + i)
        for i in range(n_prompt_tokens)
    )
    return (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"hi"},"finish_reason":"length"}],'
        b'"usage":{"prompt_tokens":%d,"completion_tokens":5,"total_tokens":%d},'
        b'"prompt_logprobs":[null,%b],"prompt_token_ids":null,"kv_transfer_params":null}'
        % (n_prompt_tokens, n_prompt_tokens + 5, plp)
    )


async def test_relayed_answer_with_usage_before_prompt_logprobs_keeps_its_usage():
    body = vllm_chat_body(4000)  # ~240 KB; whole_max lowered to 100 KB below (as the repo's own tests do)
    s = await RawServer(body, piece=64 * 1024).start()
    try:
        async with running_gateway(make_config([s.address])) as gw:
            gw.proxy.whole_max = 100_000
            status, head, got = await post(
                gw.port, {"model": "m", "prompt": "x"}
            )  # (the raw server answers any path)
            assert (status, got) == (200, body)
            assert b"transfer-encoding: chunked" in head.lower()  # relayed
            sums = {
                x.name: x.value
                for fam in gw.metrics.registry.collect()
                for x in fam.samples
                if x.name in ("inference_objective_input_tokens_sum", "inference_objective_output_tokens_sum")
            }
            # Held whole (a small answer) this is [5.0, 4000.0]; relayed: usage lost, nothing observed.
            assert sorted(sums.values()) == [5.0, 4000.0], sums
    finally:
        await s.stop()
