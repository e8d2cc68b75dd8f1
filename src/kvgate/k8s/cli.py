"""`kvgate k8s-double`: the API-server double on a port, to try kubectl against by hand.

A test fixture, not a cluster: see docs/kubernetes.md for what it does and does not prove.
"""

from __future__ import annotations

import asyncio
import contextlib

from kvgate.entry import ArgumentParser, port_number


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="kvgate k8s-double", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=0, help="0: ephemeral (printed on the ready line)")
    args = p.parse_args(argv)
    from kvgate.k8s.apiserver import serve_forever

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.host, args.port))
    return 0
