"""s17-fixes-b L1: eedcd64 counts an endpoint ready when its /metrics scrape got ANY HTTP answer
(``Endpoint.answered_at`` is set before the status is looked at), 5xx included. A fleet where everything
answers 503 (a mesh sidecar / LB in front of a dead or draining model server) serves no request, yet
``/readyz`` says 200: a readinessProbe keeps a gateway in service that fails every request. The motive
(SGLang without --enable-metrics: 404) needs 4xx only.
Run: cd /work/main && PYTHONPATH=src:tests .venv/bin/python -m pytest -c pyproject.toml -q \
  /work/team/reviews/s17-fixes-b-tests/test_readyz_5xx_fleet.py
"""

from __future__ import annotations

import asyncio

from gateway.test_big_json_answer import _resp
from gateway.test_readyz_without_metrics import served_and_ready


async def _all_503(_path: str, w: asyncio.StreamWriter) -> None:
    w.write(_resp(503, b"upstream connect error or disconnect/reset before headers"))


async def test_a_fleet_answering_503_everywhere_is_not_ready():
    served, ready = await served_and_ready(_all_503)
    assert served >= 500
    assert ready[0] == 503, f"every request fails ({served}) but /readyz says {ready}"
