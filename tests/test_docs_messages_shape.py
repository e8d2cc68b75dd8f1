"""Docs that must say what the code does (review s23-rev-docs23): the refusal shape on ``/v1/messages``
in the errors sections a client reads first, and no empty heading in the CHANGELOG. No process started."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from kvgate.openai.protocol import api_error_body

ROOT = Path(__file__).resolve().parents[1]


def _read(rel: str) -> str:
    return (ROOT / rel).read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """From ``heading`` (a whole line) to the next heading of the same or a higher level."""
    lines = text.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    out = []
    for line in lines[start + 1 :]:
        m = re.match(r"^(#+) ", line)
        if m and len(m.group(1)) <= level:
            break
        out.append(line)
    return "\n".join(out)


def test_gateway_errors_section_says_the_messages_shape() -> None:
    """F1: gateway.md "## Errors" said every refusal is OpenAI's {"error": {..., "param", "code"}}; a
    /v1/messages refusal is Anthropic's {"type": "error", "error": {"type", "message"}}."""
    body = orjson.loads(api_error_body("/v1/messages", 400, "'max_tokens' must be an integer", "max_tokens"))
    assert body["type"] == "error" and "param" not in body["error"]
    first_para = _section(_read("docs/gateway.md"), "## Errors").strip().split("\n\n")[0]
    assert "/v1/messages" in first_para and "Anthropic" in first_para, first_para


def test_epp_errors_paragraph_says_the_messages_shape() -> None:
    """F1: epp.md said the EPP's ImmediateResponses carry the OpenAI-style body; ``Session._reject``
    builds ``api_error_body(path, ...)``: Anthropic's shape on /v1/messages."""
    text = _read("docs/epp.md")
    i = text.index("Errors are `ImmediateResponse`s")
    para = text[i : text.find("\n\n", i)]
    assert "/v1/messages" in para and "Anthropic" in para, para[:300]


def test_changelog_has_no_empty_heading() -> None:
    """F5: a "### Measured: ..." heading with no body sat above its entry's real heading."""
    lines = _read("CHANGELOG.md").splitlines()
    heads = [i for i, s in enumerate(lines) if re.match(r"^#{2,} ", s)]
    empty = [
        lines[i]
        for i, j in zip(heads, [*heads[1:], len(lines)], strict=True)
        if lines[i].startswith("### ") and not "".join(lines[i + 1 : j]).strip()
    ]
    assert not empty, empty
