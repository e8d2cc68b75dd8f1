"""rev-c36 F3, F4 (``kvgate epp``): llm-d-router's control headers win over GIE's, their deprecated aliases
(red-hat-data-services/llm-d-router 1f2d25d7 ``pkg/epp/metadata/consts.go``; its handlers test "Prefers new
control headers over old aliases"): the fairness id (``flow_key``) and the model-name rewrite, which was
neither applied nor stripped. ``kvgate serve``: ``tests/gateway/test_llmd_control_headers_revc36.py``."""

from __future__ import annotations

import orjson

from extproc.test_protocol import ADDRS, _body, _headers
from kvgate.extproc import keys
from kvgate.extproc.testing import Exchange
from kvgate.flowcontrol.controller import flow_key


def test_the_fairness_id_prefers_llmds_header() -> None:
    assert flow_key("old-user", "new-user") == "new-user"
    assert flow_key("old-user", "") == "old-user"  # (empty: absent)
    assert flow_key("old-user", "default-flow") == "old-user"
    assert flow_key(None, None) == "default-flow"


async def test_llmds_rewrite_header_is_applied_first_and_stripped(start_epp) -> None:  # type: ignore[no-untyped-def]
    epp = await start_epp(ADDRS)
    async with Exchange(epp.stub) as ex:
        hs = _headers(**{keys.MODEL_REWRITE: "old-model", keys.LLMD_MODEL_REWRITE: "new-model"})
        out = await ex.send_request(hs, _body(model="m"))
        assert orjson.loads(out.body)["model"] == "new-model"
        assert keys.LLMD_MODEL_REWRITE in out.mutation.removed
        assert keys.MODEL_REWRITE in out.mutation.removed
    assert epp.picker.calls.requests[0].model == "new-model"
