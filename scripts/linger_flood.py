"""What K clients flooding after a 413 do to one front's other connections (review s21-fixes-b F2, its
scripts/linger_flood.py; gw22). The front (``max_body`` 64 KiB) runs in a child process on PORT; K threads
each send a POST announcing 100 MB (413 at its head), then 1 MiB writes without end for 6 s, reconnecting
when cut; meanwhile a prober times 40 small GETs (one connection each, 0.1 s apart). Prints the probe's
p50 / max latency, the bytes the flooders got sent, and the server's CPU seconds (``/proc``). Run it with
the tree to measure first on the path given (SRC: a ``src`` directory). With HONEST (bytes), an honest
client (stdlib ``http.client``) sends a POST of that many bytes 1 s into the flood, whole before it reads,
and what it got is printed: its 413 and when, or how it failed (gw23: the pace's turns, smallest refused
body first). ``chunked`` after it: the honest POST is sent chunked, 1 MiB chunks (a refusal of unknown
length: the pace's largest key; review s23-rev-gw23 F2).

    python scripts/linger_flood.py SRC PORT K [HONEST [chunked]]
"""

from __future__ import annotations

import http.client
import socket
import statistics
import subprocess
import sys
import threading
import time

from script_usage import usage_or_exit

SERVER = """
import asyncio, sys
sys.path.insert(0, {src!r})
from kvgate.httpfront.server import FrontServer, Response
async def h(req): return Response(body=b"ok")
async def main():
    front = FrontServer({{}}, h, max_body=64 << 10)
    await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", {port})
    front.watch_idle()
    print("up", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks (USER_HZ 100)


def main() -> None:
    usage_or_exit(__doc__, 3)
    src, port, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    honest_bytes = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    chunked = len(sys.argv) > 5 and sys.argv[5] == "chunked"
    sys.path.insert(0, src)
    from kvgate import lifeline

    server = SERVER.format(src=src, port=port)
    proc = subprocess.Popen(
        lifeline.die_with_parent_argv([sys.executable, "-c", server]), stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
    sent = [0] * k
    stop = time.monotonic() + 6.0

    def flood(i: int) -> None:
        buf = b"x" * (1 << 20)
        while time.monotonic() < stop:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
            try:
                while time.monotonic() < stop:
                    s.sendall(buf)
                    sent[i] += len(buf)
            except OSError:
                pass
            s.close()

    honest: list[str] = []

    def post() -> None:
        time.sleep(1.0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        t0 = time.monotonic()
        try:
            if chunked:
                chunks = iter([b"x" * (1 << 20)] * (honest_bytes >> 20))
                conn.request("POST", "/v1/completions", body=chunks, encode_chunked=True)
            else:
                conn.request("POST", "/v1/completions", body=b"x" * honest_bytes)
            resp = conn.getresponse()
            resp.read()
            honest.append(f"{resp.status} in {time.monotonic() - t0:.3f} s")
        except OSError as e:
            honest.append(f"{type(e).__name__} at {time.monotonic() - t0:.3f} s")
        finally:
            conn.close()

    cpu0 = _cpu_s(proc.pid)
    threads = [threading.Thread(target=flood, args=(i,)) for i in range(k)]
    if honest_bytes:
        threads.append(threading.Thread(target=post))
    for t in threads:
        t.start()
    time.sleep(0.5)
    lat = []
    for _ in range(40):
        t0 = time.monotonic()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
        s.close()
        lat.append(time.monotonic() - t0)
        time.sleep(0.1)
    for t in threads:
        t.join()
    cpu = _cpu_s(proc.pid) - cpu0
    proc.kill()
    proc.wait()
    print(
        f"K={k} probe p50 {statistics.median(lat) * 1e3:.2f} ms max {max(lat) * 1e3:.1f} ms; "
        f"flooders sent {sum(sent) / 1e9:.2f} GB; server CPU {cpu:.2f} s"
        + (f"; honest {honest_bytes / 2**20:g} MiB {'chunked ' * chunked}POST: {honest[0]}" if honest else "")
    )


if __name__ == "__main__":
    main()
