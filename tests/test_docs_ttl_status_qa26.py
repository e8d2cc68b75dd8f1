"""Review s26-qa F6: docs/gateway.md's errors table says what both doors answer when flow control's TTL
passes: 503 (as the reference: TTL expiry -> 503, capacity -> 429; pinned by
``tests/flowcontrol/test_doors.py::test_ttl_expiry_is_503_and_a_full_band_is_429``). Before, the 429 row
listed "its TTL passed" and the 503 row did not: an operator writing alerts from the table alerts on the
wrong code. No process started."""

from __future__ import annotations

from pathlib import Path

from kvgate.flowcontrol.dispatcher import TTL_MESSAGE

DOC = Path(__file__).resolve().parents[1] / "docs" / "gateway.md"


def _row(status: str) -> str:
    section = DOC.read_text().split("\n## Errors", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith(f"| {status} |")]
    assert rows, status
    return " ".join(rows)


def test_the_429_row_does_not_claim_ttl_expiry() -> None:
    assert "TTL" not in _row("429"), _row("429")[:400]


def test_the_503_row_names_ttl_expiry_and_its_message() -> None:
    assert "defaultRequestTTL" in _row("503") and TTL_MESSAGE in _row("503"), _row("503")[:400]
