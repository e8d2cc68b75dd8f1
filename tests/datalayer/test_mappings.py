"""Per-engine metric names map to the same engine-neutral signals."""

from __future__ import annotations

import pytest

from kvgate.datalayer.endpoint import EndpointMetrics
from kvgate.datalayer.mappings import UnknownEngineError, extract

VLLM = """# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
vllm:num_requests_running{engine="0",model_name="m"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:cache_config_info{block_size="16",num_gpu_blocks="27000",enable_prefix_caching="True"} 1.0
vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 1.0e9
vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters="c"} 1.7e9
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 4.0
"""


def test_vllm() -> None:
    m = extract(VLLM, "vllm", now=5.0)
    assert (m.waiting_queue_size, m.running_requests) == (5, 7)
    assert m.kv_cache_usage == pytest.approx(0.5)
    assert (m.block_size, m.num_gpu_blocks) == (16, 27000)
    assert m.max_lora == 2
    assert m.running_loras == {"a", "b"} and m.waiting_loras == {"c"}  # the newest series wins
    assert m.updated_at == 5.0


def test_vllm_older_kv_name() -> None:
    m = extract('vllm:gpu_cache_usage_perc{model_name="m"} 0.4\n', "vllm", now=1.0)
    assert m.kv_cache_usage == pytest.approx(0.4)


def test_sglang() -> None:
    text = (
        'sglang:num_queue_reqs{model_name="m"} 4\n'
        'sglang:num_running_reqs{model_name="m"} 9\n'
        'sglang:token_usage{model_name="m"} 0.3\n'
        'sglang:cache_config_info{page_size="1",num_pages="500000"} 1\n'
    )
    m = extract(text, "sglang", now=1.0)
    assert (m.waiting_queue_size, m.running_requests, m.block_size, m.num_gpu_blocks) == (4, 9, 1, 500000)
    assert m.kv_cache_usage == pytest.approx(0.3)


def test_trtllm_serve() -> None:
    text = (
        "trtllm_num_requests_waiting 2\ntrtllm_num_requests_running 6\ntrtllm_kv_cache_utilization 0.9\n"
        "trtllm_kv_cache_tokens_per_block 32\ntrtllm_kv_cache_max_blocks 4096\n"
    )
    m = extract(text, "trtllm-serve", now=1.0)
    assert (m.waiting_queue_size, m.running_requests, m.block_size, m.num_gpu_blocks) == (2, 6, 32, 4096)
    assert m.kv_cache_usage == pytest.approx(0.9)


def test_triton() -> None:
    text = (
        'nv_trt_llm_request_metrics{model="ensemble",request_type="waiting",version="1"} 3\n'
        'nv_trt_llm_request_metrics{model="ensemble",request_type="scheduled",version="1"} 5\n'
        'nv_trt_llm_request_metrics{model="ensemble",request_type="active",version="1"} 8\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="e"} 0.6\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="e"} 64\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="e"} 1000\n'
    )
    m = extract(text, "triton-tensorrt-llm", now=1.0)
    assert (m.waiting_queue_size, m.running_requests, m.block_size, m.num_gpu_blocks) == (3, 5, 64, 1000)
    assert m.kv_cache_usage == pytest.approx(0.6)


def test_missing_signals_keep_previous_values() -> None:
    prev = EndpointMetrics(waiting_queue_size=9, max_lora=4, running_loras=frozenset({"x"}), block_size=16)
    m = extract('vllm:num_requests_running{model_name="m"} 1\n', "vllm", now=2.0, previous=prev)
    assert (m.waiting_queue_size, m.running_requests, m.max_lora, m.block_size) == (9, 1, 4, 16)
    assert m.running_loras == {"x"}


def test_unknown_engine() -> None:
    with pytest.raises(UnknownEngineError, match="tgi"):
        extract("", "tgi", now=0.0)
