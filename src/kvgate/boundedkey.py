"""A client-supplied id as a table key of bounded size, whatever its length.

The gateway's tenant buckets (``gateway.tenants.bucket_key``: the tenant is the API key's, else the
client's fairness header) and flow control's arrival table (``flowcontrol.controller.rate_key``: the
client's fairness id) keep one entry per id a client sends, up to the head's 64 KiB each. Both key an
entry by the id itself up to ``KEY_MAX`` characters (no digest per look-up for the usual short ids), else
by its first ``KEPT`` characters, a NUL and 16 bytes of BLAKE2b of the whole in hex (233 characters): a
collision, ~2**-128 a pair, only shares an entry, and no header-sent id holds a NUL, so the form never
equals an id as sent (reviews s10-fc-a F3, s28-qa Q6; session 29 made the two one rule). It imports no
``kvgate`` package: both sides may import it (``tests/test_layering.py``).
"""

from __future__ import annotations

import hashlib

KEY_MAX = 256  # characters kept as they are
KEPT = 200  # characters of a longer id kept before its digest


def bounded_key(name: str) -> str:
    """``name`` itself up to ``KEY_MAX`` characters, else its first ``KEPT`` and a digest of the whole."""
    if len(name) <= KEY_MAX:
        return name
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{name[:KEPT]}\x00{digest}"
