"""Review s17-kvhub L1 (97dbb07, clusters._is_host): an internationalised host name (a U-label, e.g.
``bücher.example``) was accepted by the clusters file and by the kvgate.io/gateway annotation before 97dbb07
and worked for ``gateway`` (aiohttp/yarl IDNA-encode it: ``xn--bcher-kva.example``; the hub probe's
getaddrinfo too); 97dbb07 refused it (the file no longer loaded). Now such a name is checked as its IDNA
form: accepted as written, and one that is no name in either form still refused. Failed before the fix
(the reviewer's test, s17-kvhub-tests/test_s17_kvhub_idn_host.py)."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest
from yarl import URL

from kvgate.multicluster import hub
from kvgate.multicluster.clusters import ClustersError, parse
from kvgate.multicluster.fetcher import ProbeLookups


def test_a_unicode_host_name_still_loads_as_a_gateway() -> None:
    assert URL("http://bücher.example:8080/v1").raw_host == "xn--bcher-kva.example"  # (usable as before)
    cfg = parse({"clusters": [{"name": "a", "gateway": "bücher.example:8080"}]})
    assert cfg.clusters[0].gateway == "bücher.example:8080"


@pytest.mark.parametrize("host", ["bü cher.example", "bücher..example", "ü" * 70 + ".example"])
def test_a_unicode_string_that_is_no_host_name_is_still_refused(host: str) -> None:
    with pytest.raises(ClustersError, match="expected a host name"):
        parse({"clusters": [{"name": "a", "gateway": f"{host}:8080"}]})


# Review s17-fixes-a L1: the hub probe's getaddrinfo encoded a U-label with CPython's IDNA 2003 codec
# (faß.example -> fass.example) while the fetcher's yarl sends UTS #46 (xn--fa-hia.example): one cluster
# looked up under two names; _is_host checked the 2003 form. Now both use yarl's encoding.


def _wire(host: str) -> str:
    """The name getaddrinfo puts on the wire for ``host`` (CPython encodes str hosts with ``idna``)."""
    return host if host.isascii() else host.encode("idna").decode("ascii")


async def test_probe_and_fetcher_look_up_the_same_name(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "faß.example"
    asked: list[str] = []

    def fake_getaddrinfo(host: Any, port: Any, *a: Any, **k: Any) -> Any:
        asked.append(_wire(host))
        raise socket.gaierror(socket.EAI_NONAME, "no such name")

    monkeypatch.setattr(hub.socket, "getaddrinfo", fake_getaddrinfo)
    hub._LOOKUPS.forget()
    assert await hub.connects(f"{name}:8080", 1.0) is False  # the probe's lookup
    hub._LOOKUPS.forget()
    conn = aiohttp.TCPConnector(resolver=ProbeLookups(lambda: 1.0), use_dns_cache=False)
    async with aiohttp.ClientSession(connector=conn) as s:  # the fetcher's lookup of the same cluster
        with pytest.raises(aiohttp.ClientError):
            await s.get(f"http://{name}:8080/v1/pool/aggregate")
    hub._LOOKUPS.forget()
    assert asked == ["xn--fa-hia.example"] * 2, asked


def test_a_host_is_checked_in_the_form_yarl_sends() -> None:
    host = "ß" * 32 + ".example"  # (IDNA 2003: "ss" * 32, a label over 63; yarl: xn--zca...)
    assert URL(f"http://{host}:8080/").raw_host == "xn--zca" + "a" * 31 + ".example"
    cfg = parse({"clusters": [{"name": "a", "gateway": f"{host}:8080"}]})
    assert cfg.clusters[0].gateway == f"{host}:8080"
