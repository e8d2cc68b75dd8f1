"""Score and rerank bodies are estimated (prev24; keys23 left their texts unread: 0 tokens, one sequence,
so a 100-document rerank weighed as nothing in the in-flight accounting). Read as vLLM 0.32's
``ScoreRequest`` / ``RerankRequest`` define them, never refused: a body the server would refuse reads as
before."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kvgate.openai.request import MEDIA_PART_TOKENS, kind_for_path, parse_body


def _read(path: str, body: dict[str, Any]) -> tuple[int, int]:
    parsed = parse_body(kind_for_path(path), orjson.dumps({"model": "m", **body}))
    return parsed.prompt_tokens, parsed.sequences


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_a_rerank_is_its_query_with_each_document(path: str) -> None:
    q, docs = "q" * 40, ["a" * 80, "b" * 120, "c" * 200]
    assert _read(path, {"query": q, "documents": docs}) == ((3 * 40 + 400) // 4, 3)
    assert _read(path, {"query": q, "documents": docs[0]}) == ((40 + 80) // 4, 1)


@pytest.mark.parametrize(
    ("first", "second"),
    [("data_1", "data_2"), ("queries", "documents"), ("queries", "items"), ("text_1", "text_2")],
)
def test_a_score_pairs_one_against_each_or_pairwise(first: str, second: str) -> None:
    for path in ("/score", "/v1/score"):
        assert _read(path, {first: "x" * 40, second: ["y" * 40, "z" * 80]}) == ((80 + 120) // 4, 2)
        assert _read(path, {first: ["x" * 40, "w" * 40], second: ["y" * 40, "z" * 80]}) == (200 // 4, 2)


def test_a_content_object_counts_its_text_and_media() -> None:
    doc = {"content": [{"type": "text", "text": "t" * 40}, {"type": "image_url", "image_url": {"url": "u"}}]}
    tokens, n = _read("/rerank", {"query": "q" * 40, "documents": [doc]})
    assert n == 1 and tokens == (40 + 40) // 4 + MEDIA_PART_TOKENS


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"query": "q"},
        {"query": 5, "documents": ["a"]},
        {"text_1": ["a", "b", "c"], "text_2": ["a", "b"]},
        {"text_1": "a", "text_2": []},
    ],
)
def test_what_the_server_would_refuse_is_read_as_before(body: dict[str, Any]) -> None:
    assert _read("/score", body) == (0, 1)


@pytest.mark.parametrize(
    ("body", "winner"),
    [
        # (what vLLM 0.32's pydantic makes of each, checked with its ``TypeAdapter(ScoreRequest)``)
        (
            {"data_1": "a" * 40, "data_2": ["b" * 40, "c" * 40], "queries": "q" * 40, "documents": ["d"]},
            ("queries", "documents"),
        ),
        (
            {"text_1": "a" * 40, "text_2": ["b" * 40, "c" * 40], "data_1": "q" * 40, "data_2": ["d"]},
            ("data_1", "data_2"),
        ),
        (
            {"queries": "a" * 40, "items": ["b" * 40, "c" * 40], "documents": ["d"] * 3},
            ("queries", "documents"),
        ),
    ],
)
def test_a_body_with_two_pairs_is_read_as_vllms_union_reads_it(
    body: dict[str, Any], winner: tuple[str, str]
) -> None:
    """fixprev24 (review s24-rev-prev24, minor): the union's order is (queries/documents, queries/items,
    data, text); the comment and the code had data first."""
    alone = {k: body[k] for k in winner}
    assert _read("/score", body) == _read("/score", alone)
