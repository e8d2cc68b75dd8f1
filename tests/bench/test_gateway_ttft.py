"""The gateway-ttft benchmark's workload and its vLLM-like backend answers (no timing asserted)."""

from __future__ import annotations

import json

from kvgate.bench import gateway_ttft as g
from kvgate.datalayer.kvdetect import parse_server_info
from kvgate.openai.request import CHAT, COMPLETIONS, parse_body


def test_workload_is_tenant_prompts_with_unique_lines() -> None:
    prompts = g.workload(16, tenants=4, prefix_words=50, seed=3)
    assert len(set(prompts)) == 16 and g.workload(16, tenants=4, prefix_words=50, seed=3) == prompts
    heads = {p.split("\nUser ")[0] for p in prompts}
    assert len(heads) == 4  # every request starts with one of the tenants' system texts


def test_bodies_parse_as_the_gateway_parses_them() -> None:
    prompt = g.workload(1, prefix_words=20)[0]
    comp = parse_body(COMPLETIONS, g.body("completions", prompt))
    chat = parse_body(CHAT, g.body("chat", prompt))
    assert comp.stream and chat.stream and comp.max_tokens == chat.max_tokens == 4
    assert comp.prompt_text == prompt
    assert prompt.split("\nUser ")[0] in chat.prompt_text


def test_backend_server_info_makes_kv_events_detected() -> None:
    info = parse_server_info(json.loads(g._server_info(18101, "/tok")), "127.0.0.1")
    assert info is not None and info.bind and info.endpoint == "tcp://127.0.0.1:19101"
    assert info.tokenizer == "/tok"


def test_added_ttft_is_only_over_a_measured_direct_path(capsys):
    """Without a ``direct`` path "added" says n/a (it printed each path's own TTFT as "added")."""
    g.print_table({("kvgate", "completions"): [0.002, 0.003, 0.004]}, ["completions"], ["kvgate"])
    out = capsys.readouterr().out
    assert "| kvgate | completions | 3.00 | 3.00 | 3.00 | n/a |" in out
    assert "no direct path measured" in out
    results = {("direct", "completions"): [0.001], ("kvgate", "completions"): [0.003]}
    g.print_table(results, ["completions"], ["direct", "kvgate"])
    out = capsys.readouterr().out
    assert "| kvgate | completions | 3.00 | 3.00 | 3.00 | 2.00 |" in out
    assert "| direct | completions | 1.00 | 1.00 | 1.00 | - |" in out
    assert "no direct path" not in out
