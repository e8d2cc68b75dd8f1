"""``kvgate epp --config``: an https pool's scrape scheme and caFile reach ``_serve`` as its arguments
(``scrape_scheme``, ``scrape_ca``), not as attributes set on the argparse namespace and read back with
``getattr`` and a default (session 29, shape29). Fails on 12fe897d (``_serve`` is given neither)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import kvgate.extproc.cli as epp_cli
from kvgate.httpfront import tls


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``_serve`` replaced: the keyword arguments the EPP would serve with, nothing bound."""
    out: list[dict[str, Any]] = []

    async def fake(*_a: Any, **kw: Any) -> None:
        out.append(kw)

    monkeypatch.setattr(epp_cli, "_serve", fake)
    return out


def test_an_https_pools_scheme_and_ca_file_are_serve_s_arguments(tmp_path: Path, served: list[Any]) -> None:
    # A real certificate: since c73818de the EPP's prober builds its TLS context from the pool's caFile
    # before _serve (a caFile that holds no certificate is refused at start, exit 2).
    ca = tmp_path / "ca.pem"
    ca.write_bytes(tls.self_signed(("127.0.0.1",)).cert_pem)
    pool = {"name": "p", "endpoints": ["https://127.0.0.1:9"], "models": ["m"], "caFile": str(ca)}
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump({"pools": [pool]}))
    assert epp_cli.main(["--config", str(tmp_path / "gw.yaml")]) == 0
    assert (served[0]["scrape_scheme"], served[0]["scrape_ca"]) == ("https", str(ca))
