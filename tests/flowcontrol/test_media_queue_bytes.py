"""Review s21-fixes-a M2: flow control's ``maxBytes`` no longer bounds what the queue holds for media.

``FlowController.enqueue`` sizes a request as ``len(prompt_text)``; since 47de7fb a chat's image is a
26-char digest there, so a queued request holding a 270 KB (up to ``maxBodyBytes`` 8 MiB) body counts ~60
bytes: ``maxBytes`` (docs/flowcontrol.md: the 429 bound, default 1 GiB) stops bounding the queue's memory,
leaving ``maxRequests`` x ``maxBodyBytes`` (5,000 x 8 MiB). Before, the image's base64 counted."""

from __future__ import annotations

import base64
import os

import orjson
import pytest

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.openai.request import CHAT, RequestPolicy, inference_request, parse_body
from kvgate.scheduling.types import ShedError


def test_a_queued_image_counts_against_max_bytes() -> None:
    url = "data:image/png;base64," + base64.b64encode(os.urandom(200_000)).decode()
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})
    req = inference_request(parse_body(CHAT, raw), request_id="r1", model="m", policy=RequestPolicy())
    ctl = FlowController(FlowControlConfig(max_bytes=100_000))  # (the body is ~270 KB)
    with pytest.raises(ShedError, match="100000 bytes"):
        ctl.enqueue(req, 0.0)
