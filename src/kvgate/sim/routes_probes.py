"""The simulated replica's health, metrics and the probes peer routers use (server/model info, load,
tokenize, render, KV-event sources)."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from kvgate import __version__
from kvgate.sim.metrics import render_sglang, render_vllm
from kvgate.sim.replica_base import ApiError, ReplicaState, json_response

log = logging.getLogger(__name__)


def only_families(text: str, names: set[str]) -> str:
    """The metric families of a rendered page that ``names`` asks for by family or sample name, as
    prometheus_client's ``name[]`` filter answers (vLLM serves it at ``/metrics/``; kvgate scrapes it so).
    Every family on a simulator page starts with its ``# HELP`` line."""
    out: list[str] = []
    family: list[str] = []

    def flush() -> None:
        if not family:
            return
        samples = (ln.split("{", 1)[0].split(" ", 1)[0] for ln in family if not ln.startswith("#"))
        if family[0].split(" ", 3)[2] in names or any(n in names for n in samples):
            out.extend(family)

    for line in text.splitlines():
        if line.startswith("# HELP "):
            flush()
            family = []
        family.append(line)
    flush()
    return "\n".join(out) + "\n" if out else ""


class ProbeRoutes(ReplicaState):
    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def _reset_prefix_cache(self, request: web.Request) -> web.StreamResponse:
        """vLLM's dev endpoint: drop the prefix cache (benchmarks reuse a fleet between runs with it)."""
        if not self.engine.reset_prefix_cache():
            raise ApiError(409, "Prefix cache not reset: requests are still holding KV blocks")
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return json_response({"version": f"kvgate-sim-{__version__}"})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        stats = self.engine.stats()
        if self.cfg.engine == "sglang":
            text = render_sglang(stats, self.counters, self.cfg.model)
        else:
            text = render_vllm(stats, self.counters, self.cfg.model)
        names = request.query.getall("name[]", [])
        if names:
            text = only_families(text, set(names))
        return web.Response(
            text=text,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    def _capacity(self) -> dict[str, Any]:
        ec = self.engine_config
        return {
            "max_total_num_tokens": ec.num_gpu_blocks * ec.block_size,
            "max_running_requests": ec.max_num_seqs,
            "max_num_seqs": ec.max_num_seqs,
            "max_num_batched_tokens": ec.max_num_batched_tokens,
            "chunked_prefill_size": ec.max_num_batched_tokens,
            "max_prefill_tokens": ec.max_num_batched_tokens,
            "page_size": ec.block_size,
            "block_size": ec.block_size,
            "num_gpu_blocks": ec.num_gpu_blocks,
            "context_length": self.max_model_len,
            "max_model_len": self.max_model_len,
            "max_loras_per_batch": ec.max_loras,
            "max_loras": ec.max_loras,
        }

    async def _server_info(self, request: web.Request) -> web.StreamResponse:
        # SGLang's /get_server_info is its ServerArgs plus scheduler info; keep the fields routers read.
        stats = self.engine.stats()
        tokdir = str(self.tok.path)
        info: dict[str, Any] = {
            "model_path": tokdir,
            "tokenizer_path": tokdir,
            "served_model_name": self.cfg.model,
            "model_id": self.cfg.model,
            "host": self.cfg.host,
            "port": self.port,
            "tp_size": 1,
            "dp_size": 1,
            "pp_size": 1,
            "load_balance_method": "round_robin",
            "disaggregation_mode": "null",
            "enable_lora": bool(self.loras) or self.engine_config.max_loras > 1,
            "lora_paths": dict(self.loras),
            "engine": self.cfg.engine,
            "profile": self.cfg.profile,
            "time_scale": self.cfg.time_scale,
            "version": f"kvgate-sim-{__version__}",
            "internal_states": [
                {
                    "num_running_reqs": stats.num_running,
                    "num_queue_reqs": stats.num_waiting,
                    "token_usage": stats.kv_cache_usage,
                    "last_gen_throughput": 0.0,
                }
            ],
        }
        info.update(self._capacity())
        if self.kv is not None:
            info["kv_events_config"] = self.kv.sources()
            # vLLM's own answer (GET /server_info?config_format=json, dev mode): its --kv-events-config
            # and tokenizer. The simulator binds, which vLLM writes as a wildcard address.
            kv = self.kv.sources()
            info["vllm_config"] = {
                "kv_events_config": {
                    "enable_kv_cache_events": True,
                    "publisher": "zmq",
                    "endpoint": _wildcard(kv["endpoint"]),
                    "replay_endpoint": _wildcard(kv["replay_endpoint"]),
                    "topic": kv["topic"],
                },
                "model_config": {"tokenizer": tokdir},
            }
        return json_response(info)

    async def _model_info(self, request: web.Request) -> web.StreamResponse:
        tokdir = str(self.tok.path)
        return json_response(
            {
                "model_path": tokdir,
                "tokenizer_path": tokdir,
                "is_generation": True,
                "served_model_name": self.cfg.model,
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "preferred_sampling_params": None,
                "weight_version": "default",
                "has_image_understanding": False,
                "has_audio_understanding": False,
                "max_model_len": self.max_model_len,
                "context_length": self.max_model_len,
                "vocab_size": self.tok.vocab_size,
            }
        )

    async def _get_load(self, request: web.Request) -> web.StreamResponse:
        # sglang-router's power_of_two reads "load"; SGLang's own /get_load lists per-DP-rank loads.
        stats = self.engine.stats()
        used = round(stats.kv_cache_usage * stats.num_gpu_blocks * stats.block_size)
        return json_response(
            {
                "load": stats.num_running + stats.num_waiting,
                "dp_rank": 0,
                "num_reqs": stats.num_running + stats.num_waiting,
                "num_running_reqs": stats.num_running,
                "num_waiting_reqs": stats.num_waiting,
                "num_tokens": used,
                "ts_tic": time.perf_counter(),
            }
        )

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        self._resolve_model(body, required=False)
        ids = self._prompt_ids(body, chat="messages" in body)
        return json_response(
            {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids, "token_strs": None}
        )

    async def _detokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        self._resolve_model(body, required=False)
        toks = body.get("tokens")
        if not isinstance(toks, list) or not all(
            isinstance(t, int) and 0 <= t < self.tok.vocab_size for t in toks
        ):
            raise ApiError(
                400, f"'tokens' must be a list of token ids in [0, {self.tok.vocab_size})", "tokens"
            )
        return json_response({"prompt": self.tok.decode(toks)})

    def _rendered(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        # vLLM's render endpoints answer a GenerateRequest: the prompt's token ids plus sampling params.
        lora = self._resolve_model(body, required=False)
        ids = self._prompt_ids(body, chat)
        max_tokens = self._max_tokens(body, chat, len(ids))
        return {
            "request_id": f"{'chatcmpl' if chat else 'cmpl'}-render-{self._id_prefix}-{next(self._ids)}",
            "token_ids": ids,
            "sampling_params": {"max_tokens": max_tokens},
            "model": lora or self.cfg.model,
            "stream": bool(body.get("stream")),
        }

    async def _render_completions(self, request: web.Request) -> web.StreamResponse:
        return json_response([self._rendered(await self._body(request), chat=False)])

    async def _render_chat(self, request: web.Request) -> web.StreamResponse:
        return json_response(self._rendered(await self._body(request), chat=True))

    async def _kv_event_sources(self, request: web.Request) -> web.StreamResponse:
        if self.kv is None:
            return json_response({"enable_kv_cache_events": False, "sources": []})
        src = self.kv.sources()
        src["block_size"] = self.engine_config.block_size
        src["sources"] = [
            {"endpoint": src["endpoint"], "replay_endpoint": src["replay_endpoint"], "dp_rank": 0}
        ]
        return json_response(src)


def _wildcard(addr: object) -> str | None:
    """``tcp://127.0.0.1:P`` -> ``tcp://*:P``: how vLLM's config names a socket it binds."""
    if not isinstance(addr, str):
        return None
    scheme, _, rest = addr.partition("://")
    return f"{scheme}://*:{rest.rpartition(':')[2]}"
