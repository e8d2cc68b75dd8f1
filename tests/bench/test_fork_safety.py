"""Starting a child while gRPC runs in this process (session 15, fixfork15). A ``preexec_fn`` makes
CPython's ``subprocess`` fork (not ``vfork``) and run the at-fork handlers; grpcio's, with its threads
busy (a gRPC server and client in the same process: the ext_proc benches, a pytest process that ran the
ext_proc tests), broke the child: ``epoll_wait error: Bad file descriptor`` and SIGABRT before its exec
(clean-clone CI on d72764c, ``test_bench_flowcontrol_live_smoke``). ``lifeline.die_with_parent_argv``
sets the parent-death signal through ``setpriv`` after the exec instead: no ``preexec_fn`` anywhere."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")

from kvgate.bench import procs  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and setpriv: Linux")

STARTS = 60  # (before the fix: 8-9 of 60 broke, each run)


async def _echo(request: bytes, context: Any) -> bytes:
    return request


def test_children_start_while_grpc_calls_run_in_this_process() -> None:
    """A ``grpc.aio`` server and four clients calling it the whole time (as an ext_proc bench runs);
    ``STARTS`` children through ``procs.start`` (as the benches start theirs): each prints its line and
    exits 0 (before: several ended by SIGSEGV or SIGABRT in the child's fork handlers, before ready)."""

    async def main() -> list[str]:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "t.Echo", {"Call": grpc.unary_unary_rpc_method_handler(_echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        echo = channel.unary_unary("/t.Echo/Call")
        calls = 0

        async def call() -> None:
            nonlocal calls
            while True:
                await echo(b"x" * 64, timeout=30)
                calls += 1

        callers = [asyncio.create_task(call()) for _ in range(4)]
        bad = []
        try:
            for i in range(STARTS):
                try:
                    p, _ = await procs.start(f"c{i}", [sys.executable, "-c", "print('ready')"], "ready")
                except RuntimeError as e:
                    bad.append(f"{i}: {e}")
                    continue
                if (rc := await p.proc.wait()) != 0:
                    bad.append(f"{i}: rc {rc} {list(p.lines)}")
            assert calls > STARTS, "the gRPC calls did not run alongside the starts"
        finally:
            for t in callers:
                t.cancel()
            await asyncio.gather(*callers, return_exceptions=True)
            await channel.close()
            await server.stop(None)
        return bad

    bad = asyncio.run(main())
    assert not bad, "children broken by the fork while gRPC ran:\n" + "\n".join(bad)
