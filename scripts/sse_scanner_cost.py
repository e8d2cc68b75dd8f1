"""CPU of ``SSEScanner`` per streamed event (what ``kvgate epp`` and ``kvgate serve --clusters`` Endpoint
mode run on every chunk of a streamed answer): this tree against another.

    PYTHONPATH=src python scripts/sse_scanner_cost.py --base-src <other checkout>/src \\
        [--events 2000] [--rounds 5] [--repeats 3]

One stream per kind, as vLLM writes it (one event per chunk, as Envoy hands them on): ``content``
(chat, ``delta.content``), ``tool_calls`` (chat, ``delta.tool_calls`` argument pieces), ``reasoning``
(chat, ``delta.reasoning``), ``completions`` (``choices[].text``), ``responses`` (``response.created``,
``response.in_progress``, output item and part openings, ``response.output_text.delta`` events,
``response.completed`` with the usage) and ``anthropic`` (``message_start``, ``content_block_start``,
``content_block_delta`` events, ``message_delta`` with the usage); the chat and completions streams end
with a usage chunk. Each kind is scanned without a model rewrite (``pass``: the scanner's "nothing left to
learn" shortcut skips the JSON parse of an event once the first token is seen and the event has no
``"usage"``) and with one (``rewrite``: every event parsed and re-encoded).

Each repeat runs the base tree then this tree in fresh processes: per cell, ``--rounds`` scans of the
whole stream, CPU time (``process_time``) per event, a process's figure its fastest round. Prints every
process's figures, the medians over repeats and the ratios (this / base). Both trees must read the same
usage (a digest is compared); whether and at which event each tree saw the first token is printed once
per tree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from _costkit import fastest
from tree_runs import add_rounds_repeats, compare_runs, trees

from kvgate import lifeline

KINDS = ("content", "tool_calls", "reasoning", "completions", "responses", "anthropic")


def _stream(kind: str, events: int) -> list[bytes]:
    """One chunk per event, ``data: {...}\\n\\n`` (Anthropic's and the Responses API's with their
    ``event:`` line)."""
    import orjson

    head = {"id": "chatcmpl-9f2c4e1a7b3d4c5e8f9a0b1c2d3e4f50", "object": "chat.completion.chunk",
            "created": 1764950000, "model": "meta-llama/Llama-3.1-8B-Instruct"}  # fmt: skip
    usage = {"prompt_tokens": 812, "completion_tokens": events, "total_tokens": 812 + events}
    out: list[dict[str, Any]] = []
    if kind in ("content", "tool_calls", "reasoning"):
        out.append({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]})  # fmt: skip
        for i in range(events):
            if kind == "content":
                delta: dict[str, Any] = {"content": f" word{i % 97}"}
            elif kind == "reasoning":
                delta = {"reasoning": f" think{i % 97}"}
            elif i == 0:
                delta = {"tool_calls": [{"index": 0, "id": "chatcmpl-tool-5b1e2c", "type": "function",
                                         "function": {"name": "get_weather", "arguments": ""}}]}  # fmt: skip
            else:
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": f'"k{i % 97}": '}}]}
            out.append(
                {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
            )
        out.append({**head, "choices": [], "usage": usage})
    elif kind == "completions":
        head = {**head, "object": "text_completion"}
        for i in range(events):
            out.append({**head, "choices": [{"index": 0, "text": f" word{i % 97}", "logprobs": None,
                                             "finish_reason": None, "stop_reason": None}]})  # fmt: skip
        out.append({**head, "choices": [], "usage": usage})
    elif kind == "responses":
        resp = {"id": "resp_9f2c4e1a7b3d", "object": "response", "created_at": 1764950000,
                "model": head["model"], "status": "in_progress", "output": [], "usage": None}  # fmt: skip
        out += [{"type": "response.created", "sequence_number": 0, "response": resp},
                {"type": "response.in_progress", "sequence_number": 1, "response": resp},
                {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
                 "item": {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress",
                          "content": []}},
                {"type": "response.content_part.added", "sequence_number": 3, "item_id": "msg_1",
                 "output_index": 0, "content_index": 0,
                 "part": {"type": "output_text", "text": "", "annotations": []}}]  # fmt: skip
        for i in range(events):
            out.append({"type": "response.output_text.delta", "sequence_number": 4 + i, "item_id": "msg_1",
                        "output_index": 0, "content_index": 0, "delta": f" word{i % 97}",
                        "logprobs": []})  # fmt: skip
        done_usage = {"input_tokens": 812, "output_tokens": events, "total_tokens": 812 + events}
        done = {**resp, "status": "completed", "usage": done_usage}
        out.append({"type": "response.completed", "sequence_number": 4 + events, "response": done})
    else:
        out += [{"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                      "content": [], "model": head["model"],
                                                      "stop_reason": None, "stop_sequence": None,
                                                      "usage": {"input_tokens": 812, "output_tokens": 0}}},
                {"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}}]  # fmt: skip
        for i in range(events):
            out.append({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": f" word{i % 97}"}})  # fmt: skip
        out += [{"type": "content_block_stop", "index": 0},
                {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                 "usage": {"input_tokens": 812, "output_tokens": events}},
                {"type": "message_stop"}]  # fmt: skip
    chunks = []
    for e in out:
        name = e.get("type")
        line = b"data: " + orjson.dumps(e) + b"\n\n"
        chunks.append(b"event: " + name.encode() + b"\n" + line if isinstance(name, str) else line)
    if kind not in ("responses", "anthropic"):
        chunks.append(b"data: [DONE]\n\n")
    return chunks


def _measure(events: int, rounds: int) -> dict[str, Any]:
    import hashlib

    from kvgate.openai.sse import SSEScanner

    result: dict[str, Any] = {}
    seen: dict[str, Any] = {}
    digest = hashlib.sha256()
    for kind in KINDS:
        chunks = _stream(kind, events)
        for mode, rewrite in (("pass", None), ("rewrite", "m")):

            def scan(rewrite: str | None = rewrite, chunks: list[bytes] = chunks) -> SSEScanner:
                scanner = SSEScanner(rewrite_to=rewrite)
                for c in chunks:
                    scanner.feed(c)
                scanner.finish()
                return scanner

            best, scanner = fastest(rounds, scan)
            first_at: int | None = None
            probe = SSEScanner(rewrite_to=rewrite)  # (untimed: where the first token is seen)
            for i, c in enumerate(chunks):
                probe.feed(c)
                if probe.saw_output:
                    first_at = i
                    break
            u = scanner.usage
            read = (u.prompt_tokens, u.completion_tokens) if u is not None else None
            digest.update(f"{kind}/{mode}:{read}".encode())
            result[f"{kind}/{mode}"] = best / len(chunks) * 1e6
            seen[f"{kind}/{mode}"] = first_at
    result["digest"] = digest.hexdigest()[:16]
    print(json.dumps({"first token at event": seen}), file=sys.stderr)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-src", type=Path, help="the other tree's src/ (the baseline)")
    p.add_argument("--events", type=int, default=2000, help="generated events per stream")
    add_rounds_repeats(p, "scans")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_measure(args.events, args.rounds)))
        return 0
    if args.base_src is None:
        p.error("--base-src is required")
    probe_argv = [sys.executable, __file__, "--child", "--events", "50", "--rounds", "1"]
    for name, src in trees(args.base_src).items():  # (where each tree sees the first token: untimed)
        probe = subprocess.run(
            lifeline.die_with_parent_argv(probe_argv),
            env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        print(f"{name}: {probe.stderr.strip()}")
    argv = ["--child", "--events", str(args.events), "--rounds", str(args.rounds)]
    return compare_runs(
        __file__, argv, 600, args.base_src, args.repeats, unit="event", places=2, width=22, what="usage"
    )


if __name__ == "__main__":
    sys.exit(main())
