"""Review s32-rev-a32 F2 (docs): docs/epp.md said Envoy's Override Host policy's ``selected_host_key`` tells
the EPP which address served, without saying that the field is recent: it came with envoyproxy/envoy#43567
(issue envoyproxy/envoy#43484, opened 2026-02-13). An Envoy with the policy (envoyproxy/envoy#38757) but
before it, and Envoy Gateway's header-only ``endpointOverride`` (envoyproxy/gateway#6458), walk the list but
send no served metadata, so the EPP charges the first address whichever served. Both places that name the
field ("The Envoy side" and the protocol's step 5) now say so. Text only; fails on adadc788."""

from __future__ import annotations

from pathlib import Path

EPP_MD = Path(__file__).resolve().parents[1] / "docs" / "epp.md"


def _text() -> str:
    return " ".join(EPP_MD.read_text().split())


def test_the_envoy_side_says_which_envoy_sends_the_served_endpoint() -> None:
    text = _text()
    side = text[text.index("**One address, or a fallback list**") :][:3000]
    assert "selected_host_key" in side
    assert "envoyproxy/envoy#43567" in side, "no word of which Envoy has selected_host_key"
    assert "endpointOverride" in side and "header only" in side
    assert "charges the list's first address" in side


def test_step_5_says_which_gateways_send_none() -> None:
    text = _text()
    step = text[text.index("5. **Response headers.**") :][:600]
    assert "envoyproxy/envoy#43567" in step and "header-only `endpointOverride`" in step
