"""Review s29-rev-shape29 F1 (test gap): ``kvgate epp --config``'s https pool reaches the pod scraper the
real ``_serve`` builds (scheme https, TLS verified against the pool's caFile). 1930db32's test replaces
``_serve`` and reads the arguments it would be given; nothing ran the real ``_serve`` with them, so a
``_serve`` that dropped ``scrape_scheme`` / ``scrape_ca`` (or the pre-1930db32 ``getattr(args, ...)``
reading a name nobody sets) passed every test. Here the real ``_serve`` runs until it builds its
``MetricsScraper``: the stand-in records its arguments and raises, before any handler is installed or
anything bound (``EppServer`` binds in ``start``).

Passes on main d5eaf706; fails on a mutant whose ``_serve`` passes ``scheme="http"`` (``'http' ==
'https'``) or drops ``scrape_ca``."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

import kvgate.datalayer.scraper as scraper_module
import kvgate.extproc.cli as epp_cli


class _Built(Exception):
    """Raised by the stand-in scraper: ``_serve`` got as far as building it."""


def test_an_https_pool_is_scraped_over_https_verified_against_its_ca_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("(never read: the TLS context is a stand-in)\n")
    cafiles: list[Any] = []
    real_context = ssl.create_default_context

    def context(*a: Any, **kw: Any) -> ssl.SSLContext:
        cafiles.append(kw.get("cafile", a[1] if len(a) > 1 else None))
        return real_context()

    built: list[dict[str, Any]] = []

    def scraper(*_a: Any, **kw: Any) -> Any:
        built.append(kw)
        raise _Built

    monkeypatch.setattr(epp_cli.ssl, "create_default_context", context)
    monkeypatch.setattr(scraper_module, "MetricsScraper", scraper)
    pool = {"name": "p", "endpoints": ["https://127.0.0.1:9"], "models": ["m"], "caFile": str(ca)}
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump({"pools": [pool]}))
    with pytest.raises(_Built):
        epp_cli.main(["--config", str(tmp_path / "gw.yaml"), "--plaintext"])
    assert built, "_serve never built its scraper"
    assert built[0]["scheme"] == "https"
    assert built[0]["tls"] is not None and str(ca) in cafiles, (built[0]["tls"], cafiles)
