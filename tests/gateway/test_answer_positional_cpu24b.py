"""``Response`` and ``StreamResponse`` take their arguments by position too (session 24b: the proxy's answer
passes them so, a class called with keywords builds a dict for them, ~0.2 us a request): the same object
as the keyword form. Fails on main's src (keyword-only there: a ``TypeError``)."""

from __future__ import annotations

from kvgate.httpfront.server import Response, StreamResponse


def test_response_by_position_is_the_keyword_form() -> None:
    headers = {"x-request-id": "r"}
    got = Response(201, b"{}", None, headers, "application/json")
    want = Response(status=201, body=b"{}", headers=headers, content_type="application/json")
    for name in Response.__slots__:
        assert getattr(got, name) == getattr(want, name), name
    assert got.headers is headers  # (not copied: the proxy adds Content-Type to it after)
    assert Response(200, b"", "hi").body == b"hi"  # ``text`` third, as before


def test_stream_response_by_position_is_the_keyword_form() -> None:
    headers = {"x-request-id": "r"}
    got, want = StreamResponse(200, headers), StreamResponse(status=200, headers=headers)
    assert (got.status, got.headers, got.prepared, got.ended) == (want.status, want.headers, False, False)
    assert got.headers is headers
