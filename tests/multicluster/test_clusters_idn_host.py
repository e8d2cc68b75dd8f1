"""Review s17-kvhub L1 (97dbb07, clusters._is_host): an internationalised host name (a U-label, e.g.
``bücher.example``) was accepted by the clusters file and by the kvgate.io/gateway annotation before 97dbb07
and worked for ``gateway`` (aiohttp/yarl IDNA-encode it: ``xn--bcher-kva.example``; the hub probe's
getaddrinfo too); 97dbb07 refused it (the file no longer loaded). Now such a name is checked as its IDNA
form: accepted as written, and one that is no name in either form still refused. Failed before the fix
(the reviewer's test, s17-kvhub-tests/test_s17_kvhub_idn_host.py)."""

from __future__ import annotations

import pytest
from yarl import URL

from kvgate.multicluster.clusters import ClustersError, parse


def test_a_unicode_host_name_still_loads_as_a_gateway() -> None:
    assert URL("http://bücher.example:8080/v1").raw_host == "xn--bcher-kva.example"  # (usable as before)
    cfg = parse({"clusters": [{"name": "a", "gateway": "bücher.example:8080"}]})
    assert cfg.clusters[0].gateway == "bücher.example:8080"


@pytest.mark.parametrize("host", ["bü cher.example", "bücher..example", "ü" * 70 + ".example"])
def test_a_unicode_string_that_is_no_host_name_is_still_refused(host: str) -> None:
    with pytest.raises(ClustersError, match="expected a host name"):
        parse({"clusters": [{"name": "a", "gateway": f"{host}:8080"}]})
