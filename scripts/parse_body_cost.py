"""CPU of reading one request body (``kvgate.openai.request.parse_body``: decode, render, estimate): this
tree against another.

    PYTHONPATH=src python scripts/parse_body_cost.py --base-src <other checkout>/src \\
        [--requests 2000] [--rounds 5] [--repeats 3]

Workloads, seeded: ``chat str``, a ~2k-token (~8k-character) system prompt and a short user turn as
strings; ``chat parts``, the same as text content parts; ``chat 8 turns``, eight short turns; ``completions``,
a ~2k-token prompt; ``chat image``, a short question with a 100 KB image (a base64 data URL: the
media-part path, review s21-qa F4); and ``responses``, a Responses API body (``/v1/responses``: the ~2k-token
prompt as ``instructions``, then a user turn, the assistant's output message, a function call, its output
and a new user turn as ``input`` items; its kind is ``kind_for_path``'s, so a tree that does not read it
parses it as the doors did). Each repeat runs the base tree then this tree in fresh processes: per
cell, ``--rounds`` rounds of ``--requests`` bodies, CPU time (``process_time``) per body, a process's figure
its fastest round. The text-only cells must read the same in both trees (a digest of their prompt texts and
estimates is compared); ``chat image`` and ``responses`` are left out (their renderings changed: review s21-qa
F4, #16).
"""

from __future__ import annotations

import sys
from typing import Any

from _costkit import fastest
from tree_runs import requests_rounds_main

WORDS = ("the", "of", "prefix", "cache", "block", "token", "model", "route", "engine", "queue", "tenant")


def _bodies(kind: str, requests: int) -> tuple[str, list[bytes]]:
    import base64
    import random

    import orjson

    rng = random.Random(13)
    system = " ".join(rng.choice(WORDS) for _ in range(1500))
    out = []
    for r in range(requests):
        q = f"question {r}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 30)))
        body: dict[str, Any] = {"model": "m", "max_tokens": 64}
        if kind == "chat str":
            body["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": q}]
        elif kind == "chat parts":
            body["messages"] = [
                {"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "text", "text": q}]},
            ]
        elif kind == "chat 8 turns":
            body["messages"] = [
                {"role": ("user", "assistant")[t % 2], "content": [{"type": "text", "text": f"{q} turn {t}"}]}
                for t in range(8)
            ]
        elif kind == "completions":
            body["prompt"] = system + " " + q
        elif kind == "responses":
            answer = [{"type": "output_text", "text": f"answer to {q}", "annotations": []}]
            body["instructions"] = system
            body["input"] = [
                {"role": "user", "content": [{"type": "input_text", "text": q}]},
                {
                    "type": "message",
                    "id": f"msg_{r}",
                    "status": "completed",
                    "role": "assistant",
                    "content": answer,
                },
                {"type": "function_call", "call_id": f"c{r}", "name": "lookup", "arguments": '{"q": "x"}'},
                {"type": "function_call_output", "call_id": f"c{r}", "output": "forty-two"},
                {"role": "user", "content": "and then?"},
            ]
        else:  # chat image
            url = "data:image/png;base64," + base64.b64encode(rng.randbytes(100_000)).decode()
            image = {"type": "image_url", "image_url": {"url": url}}
            body["messages"] = [{"role": "user", "content": [{"type": "text", "text": q}, image]}]
        out.append(orjson.dumps(body))
    if kind == "responses":
        from kvgate.openai.request import kind_for_path

        return kind_for_path("/v1/responses"), out
    return ("completions" if kind == "completions" else "chat"), out


def _measure(requests: int, rounds: int) -> dict[str, Any]:
    import hashlib

    from kvgate.openai.request import parse_body

    result: dict[str, Any] = {}
    digest = hashlib.sha256()
    for cell in ("chat str", "chat parts", "chat 8 turns", "completions", "chat image", "responses"):
        kind, bodies = _bodies(cell, requests)

        def parse_all(kind: str = kind, bodies: list[bytes] = bodies) -> list[Any]:
            return [parse_body(kind, b) for b in bodies]

        best, got = fastest(rounds, parse_all)
        if cell not in ("chat image", "responses"):
            digest.update(repr([(p.prompt_text, p.prompt_tokens) for p in got]).encode())
        result[cell] = best / len(bodies) * 1e6
    result["digest"] = digest.hexdigest()[:16]
    return result


def main() -> int:
    return requests_rounds_main(
        __file__, __doc__, _measure, per="bodies", unit="body", places=2, width=14, what="renderings"
    )


if __name__ == "__main__":
    sys.exit(main())
