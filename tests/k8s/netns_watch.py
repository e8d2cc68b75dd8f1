"""Run inside ``unshare -rn`` (a private network namespace, root in a user namespace): a reflector watches
the double over loopback, then ``ip link set lo down`` makes every packet undeliverable: the watch's peer
is gone without a FIN or RST (as a dropped NAT entry or a vanished host would do), and the API server is
unreachable. Prints one JSON line: how long TCP keepalive took to end the watch (after ``lo down`` and
after the last segment the kernel received on the watch, where the keepalive's idle time starts), and how
long after ``lo up`` the reflector had the change made meanwhile. Used by test_reflector.py; runnable by hand:
``unshare -rn python tests/k8s/netns_watch.py [idle interval count [down_s]]`` (``down_s``: how long
loopback stays down after the watch ended, 2 s by default)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
from typing import Any, ClassVar

from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.reflector import Backoff, Keepalive, Reflector


def _pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip


def _ready(obj: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])  # fmt: skip


def _lo(state: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", state], check=True)


async def _until(cond, within_s: float) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class _Seen(Keepalive):
    """The reflector's keepalive, remembering each socket it was applied to (the watch's)."""

    socks: ClassVar[list[Any]] = []

    def apply(self, sock: Any) -> None:
        _Seen.socks.append(sock)
        super().apply(sock)


def _quiet_ms(sock: Any) -> int:
    """Milliseconds since the kernel last received a segment on ``sock``: the start of the keepalive's
    idle time (Linux keepalive_time_elapsed: the lesser of since the last data and since the last ACK;
    struct tcp_info's tcpi_last_data_recv and tcpi_last_ack_recv, in whole jiffies)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    last_data_recv, last_ack_recv = struct.unpack_from("=8B4I5I4I", info)[19:21]
    return int(min(last_data_recv, last_ack_recv))


async def main(ka: Keepalive, silence_s: float, down_s: float = 2.0) -> dict:
    ka = _Seen(ka.idle_s, ka.interval_s, ka.count)
    _lo("up")
    loop = asyncio.get_running_loop()
    async with ApiServerDouble(bookmark_interval=0.2, cacher_bookmarks=False) as double:
        kube = await KubeClient.connect(server=double.url)
        double.create(_pod("a"))
        double.set_pod_status("a", ready=True)
        r = Reflector(kube, R.POD, namespace="default", keepalive=ka,
                      backoff=Backoff())  # the EPP's back-off  # fmt: skip
        r.start()
        try:
            await r.wait_synced()
            await _until(lambda: r.bookmarks >= 2, 30.0)
            watches = r.watches
            _lo("down")
            down = loop.time()  # before the read: the idle start is then never placed late
            quiet = down - _quiet_ms(_Seen.socks[-1]) / 1000  # the last bookmark's arrival (or its ACK)
            double.set_pod_status("a", ready=False)  # the API server's view changes meanwhile
            await _until(lambda: r.error is not None, silence_s + 30.0)
            ended_at = loop.time()
            error = r.error
            await asyncio.sleep(down_s)  # unreachable a while: the retries back off
            _lo("up")
            up = loop.time()
            await _until(lambda: not _ready(r.items[("default", "a")]), 30.0)
            return {"keepalive": [ka.idle_s, ka.interval_s, ka.count], "detect_s": ka.detect_s,
                    "ended_after_s": round(ended_at - down, 3),
                    "ended_after_quiet_s": round(ended_at - quiet, 3), "error": error, "overruns": r.overruns,
                    "seen_after_lo_up_s": round(loop.time() - up, 3), "watches_before": watches,
                    "lists": r.lists, "watches": r.watches}  # fmt: skip
        finally:
            await r.stop()
            await kube.close()


if __name__ == "__main__":
    idle, interval, count = (int(a) for a in (sys.argv[1:4] or (1, 1, 2)))
    down_s = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    print(json.dumps(asyncio.run(main(Keepalive(idle, interval, count), silence_s=60.0, down_s=down_s))))
