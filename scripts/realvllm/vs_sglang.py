"""kvgate serve (default policy; --kv-events auto and off) vs sglang-router cache_aware on real vLLM.

Two vLLM CPU servers (tiny Llama, block 128, 64 blocks each = 8,064 tokens; KV events on, dev mode),
TEXT prompts: ``--tenants`` system prompts of ~``--prefix-words`` words (each ~1.9k tokens with the
tiny Llama's tokenizer) x ``--per-tenant`` users, shuffled (seeded), sent one at a time, streaming. Every
router gets the same sequence, every server's prefix cache reset before each router. Hit rate = delta
``vllm:prefix_cache_hits_total`` / delta ``vllm:prefix_cache_queries_total`` over both servers; TTFT =
client-side time to the first streamed chunk.

Routers: ``kvgate`` (``kvgate-off``, ``kvgate-scrape500``, ``...@base``), ``sglang``, and the no-router
baselines ``direct`` (every request straight to server 0) and ``direct-tenant`` (tenant t straight to
server t mod 2: a prefix-aware placement without a router in between); ``--direct`` adds ``direct``.
Every router runs in a session of its own, as each vLLM server (``kvgate-inclient``: kvgate in this
client's session, as before session 25; see ``start_kvgate``).
A router name ending in ``/cpuN`` (``kvgate/cpu1,sglang/cpu1``) runs that router pinned to CPU N (as
``kvgate bench gateway-overhead``'s paths), and a pinned kvgate pass pairs with the sglang-router pass
pinned alike: with vLLM's default binding every server's worker runs on CPU 0, so ``/cpu1`` keeps the
router's own CPU off the cores the prefills run on.

Every request asks for kvgate's ``x-kvgate-timing`` (other routers forward or ignore it), and each
router's line is followed by a breakdown of its mean TTFT on one monotonic clock: client send ->
response head (all) -> first chunk at the client, and for kvgate the gateway's own marks between:
whole request in (recv), parsed, picked, written upstream (sent), vLLM's response head, vLLM's first
chunk.

After each request the script reads both servers' prefix-cache counters (a filtered ``/metrics/`` GET of
two series, in the idle time before the next request, the same for every router), so every request
records which server served it, its prompt tokens and how many of them hit. From these it splits each
router's mean TTFT into placement (tokens that missed the cache) and a per-request cost at equal missed
tokens, and pairs each kvgate pass with the sglang-router pass run next to it (paired ratio per pass,
geomean / min / max: ``kvgate.realvllm.paired``). ``--json`` writes every pass and request;
``scripts/realvllm/aggregate.py`` combines runs (seeds).

    .venv/bin/python scripts/realvllm/vs_sglang.py [--seed 1] [--tenants 8] [--per-tenant 8] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from kvgate import lifeline
from kvgate.bench import peers
from kvgate.bench.gateway_overhead import _pinned, split_pin
from kvgate.bench.workloads import tenant_prompts
from kvgate.datalayer.mappings import filter_query
from kvgate.realvllm.bench import reset_caches
from kvgate.realvllm.harness import MODEL_NAME, ServerSpec, fleet, free_ports, prefix_cache_counters
from kvgate.realvllm.paired import fit_miss_cost, hit_miss_split, paired_ratios, spread

# vLLM's own per-request histograms read after each request (sum and count): time queued in the
# engine, prefill, and TTFT as the server measured it. A request's delta is taken only where the served
# server's count moved by exactly one (else a late observation would land on the next request).
SERVER_SIDE = (
    ("v_queue_ms", "vllm:request_queue_time_seconds"),
    ("v_prefill_ms", "vllm:request_prefill_time_seconds"),
    ("v_ttft_ms", "vllm:time_to_first_token_seconds"),
)
# The two prefix-cache counters and those histograms' series (prometheus_client's name[] filter, as
# kvgate's own scrapes use; it matches sample names, so _sum and _count are named).
COUNTERS_PATH = "/metrics/?" + urllib.parse.urlencode(
    [("name[]", "vllm:prefix_cache_queries_total"), ("name[]", "vllm:prefix_cache_hits_total")]
    + [("name[]", f"{m}_{part}") for _, m in SERVER_SIDE for part in ("sum", "count")]
)


def workload(tenants: int, per: int, prefix_words: int, seed: int) -> list[str]:
    return tenant_prompts([t for t in range(tenants) for _ in range(per)], tenants, prefix_words, seed)


def tenant_of(prompt: str, prompts: list[str]) -> int:
    """Which tenant a prompt belongs to: its system text, numbered in order of first appearance."""
    systems: dict[str, int] = {}
    for p in prompts:
        systems.setdefault(p.split("\nUser ", 1)[0], len(systems))
    return systems[prompt.split("\nUser ", 1)[0]]


def target(name: str, base: str | None, urls: list[str], prompt: str, prompts: list[str]) -> str:
    """Where a request of a pass goes: the router, else (no router) server 0, or for the per-tenant
    baseline tenant t's server (t mod servers, t numbered within ``prompts``). Warm-up and the measured
    pass both go through here, so a warm-up warms the path its pass takes."""
    if base is not None:
        return base
    if name.startswith("direct, tenant"):
        return urls[tenant_of(prompt, prompts) % len(urls)]
    return urls[0]


def timed(base: str, prompt: str) -> dict[str, float]:
    """One streamed completion; times on time.monotonic() (CLOCK_MONOTONIC, as kvgate's marks):
    ``send``, ``c_head`` (response head at the client), ``c_first`` (first ``data:`` line), plus the
    gateway's ``x-kvgate-timing`` marks when the router is kvgate."""
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 4, "ignore_eos": True, "temperature": 0,
            "stream": True}  # fmt: skip
    req = urllib.request.Request(base + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", "x-kvgate-timing": "1"})  # fmt: skip
    out = {"send": time.monotonic()}
    with urllib.request.urlopen(req, timeout=300) as r:
        out["c_head"] = time.monotonic()
        marks = r.headers.get("x-kvgate-timing")
        for line in r:
            if "c_first" not in out and line.startswith(b"data:"):
                out["c_first"] = time.monotonic()
    out["end"] = time.monotonic()  # the stream's end: the window the per-request CPU deltas cover
    if marks:
        out.update({k: float(v) for k, v in (kv.split("=", 1) for kv in marks.split(","))})
    return out


# (label, from mark, to mark): consecutive steps, so a router's rows add up to its mean TTFT.
KVGATE_STEPS = (
    ("client -> gateway has the request", "send", "recv"),
    ("gateway: parse, headers", "recv", "parsed"),
    ("gateway: pick (tokenize, score, admit)", "parsed", "picked"),
    ("gateway: write upstream", "picked", "sent"),
    ("vLLM: request -> response head", "sent", "head"),
    ("vLLM: response head -> first chunk", "head", "first"),
    ("gateway relay -> client first chunk", "first", "c_first"),
)
PLAIN_STEPS = (
    ("client send -> response head", "send", "c_head"),
    ("response head -> first chunk", "c_head", "c_first"),
)


def breakdown(records: list[dict[str, float]]) -> list[tuple[str, float, float]]:
    """(step, mean ms, p90 ms) over the requests, steps in order."""
    steps = KVGATE_STEPS if all("first" in r for r in records) else PLAIN_STEPS
    out = []
    for label, a, b in steps:
        ms = sorted(1000 * (r[b] - r[a]) for r in records)
        out.append((label, statistics.fmean(ms), ms[int(0.9 * (len(ms) - 1))]))
    return out


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | None, group: bool = False) -> float:
    """CPU seconds (user + system) of a process, or of every live process in its process group."""
    if pid is None:
        return 0.0
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat") if group else [Path(f"/proc/{pid}/stat")]:
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if not group or int(f[2]) == pid:  # fields after the name: state ppid pgrp ... utime stime
            total += int(f[11]) + int(f[12])
    return total / _TICK


PROC_STAT, PSI_CPU = Path("/proc/stat"), Path("/proc/pressure/cpu")


def machine_cpu(stat_text: str, psi_text: str | None) -> tuple[float, float, float]:
    """The whole machine's (ms busy, ms idle) summed over its CPUs, from ``/proc/stat``'s ``cpu`` line
    (user nice system idle iowait irq softirq steal; guest time is inside user), and the PSI ``some``
    total of ``/proc/pressure/cpu`` in ms (time in which at least one runnable task waited for a core;
    nan without PSI). Deltas of these, less this run's own processes' CPU, say how much of the two
    cores other work took during a request (rv36): ticks are USER_HZ (10 ms), so read them over a
    pass's requests, not one."""
    f = [int(x) for x in stat_text.split("\n", 1)[0].split()[1:9]]
    busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
    psi = float("nan")
    for line in (psi_text or "").splitlines():
        if line.startswith("some "):
            psi = int(line.rsplit("total=", 1)[1]) / 1000
    return 1000 * busy / _TICK, 1000 * (f[3] + f[4]) / _TICK, psi


def machine_now() -> tuple[float, float, float]:
    try:
        psi = PSI_CPU.read_text()
    except OSError:
        psi = None
    return machine_cpu(PROC_STAT.read_text(), psi)


def group_pids(pid: int | None) -> list[int]:
    """The live processes of ``pid``'s process group (the router's, or one vLLM server's)."""
    if pid is None:
        return []
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[2]) == pid:
            out.append(int(stat.parent.name))
    return out


def sched_ms(pids: list[int], main_only: bool = False) -> tuple[float, float]:
    """(ms on a CPU, ms runnable but waiting for one) summed over every thread of ``pids``, from
    /proc/<pid>/task/<tid>/schedstat (ns): the wait is the time the scheduler kept a ready thread off the
    cores, so a per-request delta tells waiting for a core apart from work. Threads that ended between two
    reads drop out of the sum, so a delta is clamped at 0. ``main_only``: each process's main thread only
    (kvgate's event loop)."""
    run = wait = 0
    for pid in pids:
        for st in Path(f"/proc/{pid}/task").glob(f"{pid if main_only else '*'}/schedstat"):
            try:
                a, b, _ = st.read_text().split()
            except (OSError, ValueError):
                continue
            run += int(a)
            wait += int(b)
    return run / 1e6, wait / 1e6


def thread_sched(pids: list[int]) -> dict[str, tuple[float, float]]:
    """Per thread name (``comm``: ``python``'s main thread, ``ZMQbg/IO/0``, a tokenizer pool's
    ``tokio-runtime-w``...), (ms on a CPU, ms waiting for one) summed over the threads of ``pids`` with
    that name, from /proc/<pid>/task/<tid>/{comm,schedstat}: which of a router's threads work and wait,
    not only how much all of them do (``sched_ms``). A process's main thread is named ``main``."""
    out: dict[str, tuple[float, float]] = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                comm = "main" if task.name == str(pid) else (task / "comm").read_text().strip()
                a, b, _ = (task / "schedstat").read_text().split()
            except (OSError, ValueError):
                continue
            r, w = out.get(comm, (0.0, 0.0))
            out[comm] = (r + int(a) / 1e6, w + int(b) / 1e6)
    return out


def thread_delta(
    a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]]
) -> dict[str, list[float]]:
    """``thread_sched`` b - a per thread name ([run ms, wait ms], each clamped at 0: a thread that ended
    drops out of b), names with neither moving left out."""
    out = {}
    for comm, (r1, w1) in b.items():
        r0, w0 = a.get(comm, (0.0, 0.0))
        d = [round(max(0.0, r1 - r0), 3), round(max(0.0, w1 - w0), 3)]
        if d[0] or d[1]:
            out[comm] = d
    return out


def scrape_cost(server: Any, n: int = 100) -> None:
    """The API server's CPU per GET: the whole /metrics page, kvgate's filtered scrape, /health."""
    pid = server.proc.pid if server.proc is not None else None
    for label, path in (("GET /metrics", "/metrics"), ("kvgate's filtered scrape", "/metrics/?" +
                        (filter_query("vllm") or "")), ("GET /health", "/health")):  # fmt: skip
        c0, t0 = cpu_s(pid), time.perf_counter()
        for _ in range(n):
            with urllib.request.urlopen(server.url + path, timeout=10) as r:
                size = len(r.read())
        used = 1000 * (cpu_s(pid) - c0) / n
        print(f"{label:26s} of server 0: {size:6,} bytes, API-server CPU {used:.2f} ms, "
              f"wall {1000 * (time.perf_counter() - t0) / n:.2f} ms per request ({n} sequential)",
              flush=True)  # fmt: skip


def histogram_sums(text: str) -> tuple[float, ...]:
    """(sum, count) of each ``SERVER_SIDE`` histogram, flattened in that order, summed over label sets."""
    want = {f"{m}_{part}": 2 * i + j for i, (_, m) in enumerate(SERVER_SIDE)
            for j, part in enumerate(("sum", "count"))}  # fmt: skip
    out = [0.0] * (2 * len(SERVER_SIDE))
    for line in text.splitlines():
        at = want.get(line.split("{", 1)[0].split(" ", 1)[0])
        if at is not None:
            out[at] += float(line.rsplit(" ", 1)[1])
    return tuple(out)


def counters(servers: list) -> list[tuple[float, ...]]:
    """Each server's (queries, hits) prefix-cache token counters, then ``histogram_sums``, from one
    filtered GET."""
    out = []
    for s in servers:
        with urllib.request.urlopen(s.url + COUNTERS_PATH, timeout=10) as r:
            text = r.read().decode()
        out.append(prefix_cache_counters(text) + histogram_sums(text))
    return out


def placed(before: list[tuple[float, ...]], after: list[tuple[float, ...]]) -> dict[str, float]:
    """Which server one (sequential) request went to, its prompt tokens and its prefix-hit tokens;
    server -1 if no server's counters moved (not seen yet) or more than one did. With the histograms
    (``counters``): the served server's queue, prefill and TTFT for the request (ms), where each one's
    count moved by exactly one."""
    moved = [i for i, (a, b) in enumerate(zip(after, before, strict=True)) if a[0] > b[0]]
    if len(moved) != 1:
        return {"server": -1, "prompt_tokens": 0.0, "hit_tokens": 0.0}
    i = moved[0]
    out = {
        "server": i,
        "prompt_tokens": after[i][0] - before[i][0],
        "hit_tokens": after[i][1] - before[i][1],
    }
    for k, (key, _) in enumerate(SERVER_SIDE):
        at = 2 + 2 * k
        if len(after[i]) > at + 1 and after[i][at + 1] - before[i][at + 1] == 1:
            out[key] = 1000 * (after[i][at] - before[i][at])
    return out


def progress(name: str, done: int, total: int, records: list[dict[str, float]]) -> str:
    """One line every 10 requests (stderr): how far the pass is, its mean TTFT and hits so far."""
    ms = statistics.fmean(1000 * (r["c_first"] - r["send"]) for r in records)
    hits = sum(1 for r in records if r["server"] >= 0 and r["hit_tokens"] >= 0.5 * r["prompt_tokens"])
    return f"  .. {name}: {done}/{total} requests, mean TTFT so far {ms:.0f} ms, {hits} hits"


def log_size(server: Any) -> int:
    """How many bytes a server's log holds now (0 without one): where a pass's lines start."""
    try:
        return int(Path(server.log_path).stat().st_size)
    except (AttributeError, OSError):
        return 0


def metrics_gets(server: Any, start: int) -> int:
    """``GET /metrics`` requests a server's access log shows since byte ``start``, less this client's own
    counter reads (their query names ``vllm:prefix_cache_queries_total``): the router's scrapes."""
    try:
        with Path(server.log_path).open("rb") as f:
            f.seek(start)
            tail = f.read()
    except (AttributeError, OSError):
        return 0
    return sum(
        1 for ln in tail.splitlines() if b'"GET /metrics' in ln and b"prefix_cache_queries_total" not in ln
    )


def server_ttft(text: str) -> tuple[float, float]:
    """(sum, count) of vLLM's own ``vllm:time_to_first_token_seconds`` histogram."""
    total = n = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:time_to_first_token_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:time_to_first_token_seconds_count"):
            n += float(line.rsplit(" ", 1)[1])
    return total, n


def run(
    name: str,
    base: str | None,
    servers: list,
    prompts: list[str],
    gap: float = 0.0,
    router_pid: int | None = None,
    router_group: bool = False,
    warmup: list[str] | None = None,
) -> dict[str, Any]:
    """One pass. ``base`` None: no router, each request straight to a server (``name`` says which).

    ``warmup``: prompts sent through the same path first (unmeasured), then the caches are reset: a
    freshly started router's first requests pay one-time costs (first use of code paths, a tokenizer's
    self-checks, the KV-event catch-up) that a long-running one paid long ago."""
    urls = [s.url for s in servers]
    for p in warmup or []:
        timed(target(name, base, urls, p, warmup or []), p)
        time.sleep(gap)
    reset_caches(servers)
    time.sleep(0.5)
    pids = [s.proc.pid if s.proc is not None else None for s in servers]
    cpu0 = [cpu_s(router_pid, router_group), *(cpu_s(p) for p in pids), *(cpu_s(p, True) for p in pids),
            cpu_s(os.getpid())]  # fmt: skip
    machine0 = machine_now()
    texts = [s.metrics_text() for s in servers]
    before, tb = [prefix_cache_counters(t) for t in texts], [server_ttft(t) for t in texts]
    records = []
    logs0 = [log_size(s) for s in servers]
    load0 = os.getloadavg()[0]
    seen = counters(servers)
    # Per request, the CPU and run-queue wait (send to end of stream) of the router, the vLLM API servers,
    # the rest of the vLLM processes (engine cores, workers) and this client.
    apis = [p for p in pids if p is not None]
    # "loop": the router's main thread alone (kvgate's event loop; the other sums are over all threads).
    router = group_pids(router_pid) if router_group else [router_pid] if router_pid else []
    watch = {"router": (router, False),
             "loop": ([router_pid] if router_pid and not router_group else [], True),
             "api": (apis, False), "engine": ([q for p in apis for q in group_pids(p) if q != p], False),
             "client": ([os.getpid()], False)}  # fmt: skip
    # And each server's whole process group apart ("server0", "server1": API server, engine core, workers),
    # so a request's wait for a core can be told apart by server (the one that served it or the other).
    watch.update({f"server{i}": (group_pids(p), False) for i, p in enumerate(apis)})
    # Per thread name, over the pass: the router's threads and each server's (API server, engine core,
    # workers); per request, the router's (``threads``: which of its threads work and wait then).
    groups = {"router": router, **{f"server{i}": group_pids(p) for i, p in enumerate(apis)}}
    pass0 = {k: thread_sched(v) for k, v in groups.items()}
    for p in prompts:
        time.sleep(gap)
        t0 = thread_sched(router)
        s0 = {k: sched_ms(*v) for k, v in watch.items()}
        m0 = machine_now()
        rec = timed(target(name, base, urls, p, prompts), p)
        m1 = machine_now()
        for k, a, b in zip(("machine_busy_ms", "machine_idle_ms", "psi_some_ms"), m0, m1, strict=True):
            rec[k] = b - a
        for k, v in watch.items():
            (r0, w0), (r1, w1) = s0[k], sched_ms(*v)
            rec[f"{k}_run_ms"], rec[f"{k}_wait_ms"] = max(0.0, r1 - r0), max(0.0, w1 - w0)
        rec["threads"] = thread_delta(t0, thread_sched(router))  # type: ignore[assignment]
        now = counters(servers)
        rec.update(placed(seen, now))
        seen = now
        records.append(rec)
        if len(records) % 10 == 0 or len(records) == len(prompts):
            print(progress(name, len(records), len(prompts), records), file=sys.stderr, flush=True)
    times = [r["c_first"] - r["send"] for r in records]
    threads = {k: thread_delta(pass0[k], thread_sched(v)) for k, v in groups.items()}
    cpu1 = [cpu_s(router_pid, router_group), *(cpu_s(p) for p in pids), *(cpu_s(p, True) for p in pids),
            cpu_s(os.getpid())]  # fmt: skip
    machine = [b - a for a, b in zip(machine0, machine_now(), strict=True)]
    cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    # The router's /metrics GETs during the pass, per server (before this client's own read below).
    scrapes = [metrics_gets(s, at) for s, at in zip(servers, logs0, strict=True)]
    texts = [s.metrics_text() for s in servers]
    after, ta = [prefix_cache_counters(t) for t in texts], [server_ttft(t) for t in texts]
    q = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    h = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    st = sum(a[0] - b[0] for a, b in zip(ta, tb, strict=True))
    sn = sum(a[1] - b[1] for a, b in zip(ta, tb, strict=True))
    res: dict[str, Any] = {"hit_rate": h / q if q else 0.0, "mean_ttft_ms": 1000 * statistics.fmean(times),
           "p90_ttft_ms": 1000 * sorted(times)[int(0.9 * (len(times) - 1))],
           "server_ttft_ms": 1000 * st / sn if sn else float("nan"),
           "stalls_1s": sum(t >= 1.0 for t in times), "load_start": load0,
           "load_end": os.getloadavg()[0]}  # fmt: skip
    per_server = [int(a[0] - b[0]) for a, b in zip(after, before, strict=True)]
    print(f"{name:34s} hit {res['hit_rate']:.3f}  mean TTFT {res['mean_ttft_ms']:.0f} ms  "
          f"p90 {res['p90_ttft_ms']:.0f} ms  vLLM-side mean TTFT {res['server_ttft_ms']:.0f} ms  "
          f">=1 s: {res['stalls_1s']}  prompt tokens per server {per_server}", flush=True)  # fmt: skip
    for label, mean_ms, p90_ms in breakdown(records):
        print(f"    {label:40s} mean {mean_ms:7.1f} ms  p90 {p90_ms:7.1f} ms", flush=True)
    side = {k: [r[k] for r in records if k in r] for k, _ in SERVER_SIDE}
    if all(side.values()):
        print("    vLLM per request (its own histograms): " + ", ".join(
            f"{k[2:-3]} {statistics.fmean(v):.1f} ms" for k, v in side.items())
            + f" ({len(side['v_ttft_ms'])} of {len(records)} requests)", flush=True)  # fmt: skip
    n = len(servers)
    api, whole = [round(c, 2) for c in cpu[1 : 1 + n]], [round(c, 2) for c in cpu[1 + n : 1 + 2 * n]]
    print(f"    CPU during the pass: router {cpu[0]:.2f} s, vLLM API servers {api} s, servers {whole} s",
          flush=True)  # fmt: skip
    print(f"    the router's GET /metrics per server during the pass: {scrapes}", flush=True)
    for k, per in threads.items():
        top = sorted(per.items(), key=lambda kv: -kv[1][0] - kv[1][1])[:6]
        print(f"    threads, {k} (run / wait for a core, ms over the pass): "
              + ", ".join(f"{c} {r:.0f} / {w:.0f}" for c, (r, w) in top), flush=True)  # fmt: skip
    res["threads"] = threads
    res["autogroups"] = {"router": autogroup(router_pid), "client": autogroup(os.getpid())}
    res["router_cpu_s"] = cpu[0]
    res["api_cpu_s"] = sum(cpu[1 : 1 + n])
    res["servers_cpu_s"] = sum(cpu[1 + n : 1 + 2 * n])
    # Per server (its whole process group), this client, and the machine over the pass: what the run's
    # own processes took of the two cores and what other work took (rv36).
    res["server_cpu_list"] = cpu[1 + n : 1 + 2 * n]
    res["client_cpu_s"] = cpu[1 + 2 * n]
    res["machine_busy_s"], res["machine_idle_s"] = machine[0] / 1000, machine[1] / 1000
    res["psi_some_s"] = machine[2] / 1000
    res["others_cpu_s"] = res["machine_busy_s"] - cpu[0] - res["servers_cpu_s"] - res["client_cpu_s"]
    print(f"    the machine over the pass: busy {res['machine_busy_s']:.1f} s, idle "
          f"{res['machine_idle_s']:.1f} s (both CPUs), other work's CPU {res['others_cpu_s']:.1f} s, "
          f"CPU pressure 'some' {res['psi_some_s']:.1f} s", flush=True)  # fmt: skip
    res["router_scrapes"] = scrapes
    res["records"] = records
    return res


IN_CLIENT = ", in the client's session"


def start_kvgate(
    cmd: list[str], out: Any, env: dict[str, str] | None, own_session: bool = True
) -> subprocess.Popen[bytes]:
    """``kvgate serve`` in a session of its own, as ``peers.launch`` starts sglang-router and the harness
    each vLLM server: with the kernel's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``)
    a session is one scheduling group with one fair share of the CPUs, so a router in the client's session
    shares that share with the client (and, in a ``bash -c`` under ``flock``, its shell) while sglang-router
    has one of its own. ``own_session`` False (router ``kvgate-inclient``): the client's session, as this
    script started kvgate before session 25."""
    return subprocess.Popen(
        lifeline.die_with_parent_argv(cmd), stdout=out, stderr=subprocess.STDOUT, env=env,
        start_new_session=own_session,
    )  # fmt: skip


def autogroup(pid: int | None) -> str:
    """The scheduling autogroup a process runs in (``/autogroup-N nice K``), "" where none is shown."""
    if pid is None:
        return ""
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().strip()
    except OSError:
        return ""


def pass_means(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per router, the mean over its passes of each number a pass reports (not its records, nor what
    else a pass keeps that is not a number: the autogroups)."""
    return {
        n: {k: statistics.fmean(r[k] for r in rs) for k, v in rs[0].items() if isinstance(v, (int, float))}
        for n, rs in results.items()
    }


def commit(where: str | None = None) -> str:
    """The short commit (``+dirty`` with uncommitted tracked changes) of the git tree at ``where`` (default:
    the working directory)."""
    git = ["git"] if where is None else ["git", "-C", where]
    try:
        out = subprocess.run(
            lifeline.die_with_parent_argv([*git, "rev-parse", "--short", "HEAD"]),
            capture_output=True,
            text=True,
        )
        dirty = subprocess.run(
            lifeline.die_with_parent_argv([*git, "status", "--porcelain", "--untracked-files=no"]),
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def kvgate_tree() -> str:
    """Where the kvgate package this run imports (and its ``kvgate serve`` subprocesses, which inherit
    PYTHONPATH) comes from: a run of another commit's code sets PYTHONPATH to that tree's ``src``."""
    import kvgate

    return str(Path(kvgate.__file__).resolve().parent)


def missed(rec: dict[str, float]) -> float:
    return rec["prompt_tokens"] - rec["hit_tokens"]


def ttft_ms(rec: dict[str, float]) -> float:
    return 1000 * (rec["c_first"] - rec["send"])


PIN_MARK = ", router on CPU "


def pin_suffix(name: str) -> str:
    """The ``, router on CPU ...`` part of a pass's router name ("" unpinned)."""
    at = name.find(PIN_MARK)
    return "" if at < 0 else name[at:]


def report(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Paired kvgate / sglang-router ratios per pass, and each router's TTFT at equal missed tokens."""
    out: dict[str, Any] = {}
    recs = [r for rs in results.values() for p in rs for r in p["records"] if r["server"] >= 0]
    if len(recs) >= 2:
        slope = fit_miss_cost([missed(r) for r in recs], [ttft_ms(r) for r in recs]).per_token_ms
        out["per_missed_token_ms"] = slope
        print(f"TTFT per missed prompt token (all routers' requests): {slope * 1000:.1f} ms per 1k tokens")
        for name, rs in results.items():
            bases = []
            for p in rs:
                ok = [r for r in p["records"] if r["server"] >= 0]
                bases.append(statistics.fmean(ttft_ms(r) - slope * missed(r) for r in ok) if ok else 0.0)
                p["base_ms"] = bases[-1]
            miss_k = [
                statistics.fmean(missed(r) for r in p["records"] if r["server"] >= 0) / 1000 for p in rs
            ]
            print(f"  {name:34s} TTFT at 0 missed tokens per pass {[round(b, 1) for b in bases]} ms; "
                  f"missed tokens per request {[round(m, 2) for m in miss_k]}k")  # fmt: skip
    print("mean TTFT = hit share x TTFT of a hit + the rest x TTFT of a miss (hit: >= half the prompt):")
    for name, rs in results.items():
        for i, p in enumerate(rs):
            sp = hit_miss_split(p["records"])
            p["hit_share"], p["hit_ms"], p["miss_ms"] = sp.hit_share, sp.hit_ms, sp.miss_ms
            print(f"  {name:34s} pass {i}: {sp.hits} hits x {sp.hit_ms:.1f} ms + {sp.misses} misses x "
                  f"{sp.miss_ms:.1f} ms")  # fmt: skip
    for name, rs in results.items():
        # A kvgate pass pairs with the sglang-router pass pinned alike (both unpinned, or both /cpuN).
        sg = results.get("sglang-router cache_aware" + pin_suffix(name))
        if sg is None or not name.startswith("kvgate") or len(rs) != len(sg):
            continue
        row: dict[str, Any] = {}
        for key in ("mean_ttft_ms", "p90_ttft_ms", "server_ttft_ms", "base_ms", "hit_ms", "miss_ms"):
            if all(key in p for p in rs + sg):
                ratios = paired_ratios([p[key] for p in rs], [p[key] for p in sg])
                row[key] = {"ratios": ratios, "geomean": spread(ratios).geomean}
                print(f"paired {name} / sglang-router, {key}: per pass {[round(r, 2) for r in ratios]}; "
                      f"{spread(ratios)}")  # fmt: skip
        row["hit_rate"] = paired_ratios([p["hit_rate"] for p in rs], [p["hit_rate"] for p in sg])
        out[name] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument("--per-tenant", type=int, default=8)
    ap.add_argument("--prefix-words", type=int, default=950)
    ap.add_argument("--routers", default="kvgate,kvgate-off,sglang")
    ap.add_argument("--direct", action="store_true", help="add the no-router baseline 'direct' (server 0)")
    ap.add_argument("--probe", action="store_true", help="first: miss vs hit TTFT straight to one server")
    ap.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds between requests (> 1: past vLLM's 1 s post-request busy-spin)",
    )
    ap.add_argument(
        "--split-cores",
        action="store_true",
        help="pin server i's worker to core i (vLLM's 'auto' pins both to core 0)",
    )
    ap.add_argument("--repeats", type=int, default=2, help="passes; every other one in reverse order")
    ap.add_argument("--base-src", help="another kvgate source tree: routers ending in @base run it")
    ap.add_argument("--json", help="write the arguments, commit, every pass and every request here")
    ap.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="send N unmeasured requests (other tenants: seed + 1000) through each router before its pass",
    )
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # At the start: the trees may move (a rebase) while the run goes on.
    code = {"commit": commit(kvgate_tree()), "script_commit": commit(), "kvgate_src": kvgate_tree()}
    sg = peers.PEERS["sglang-router"]
    peers.ensure_installed(sg)
    ports = free_ports(6)
    specs = [ServerSpec(ports[i], events_port=ports[2 + i], replay_port=ports[4 + i], num_gpu_blocks=64,
                        max_model_len=4096, omp_bind=str(i) if args.split_cores else None)
             for i in range(2)]  # fmt: skip
    log_dir = Path(tempfile.mkdtemp(prefix="kvgate-vs-sglang-"))
    prompts = workload(args.tenants, args.per_tenant, args.prefix_words, args.seed)
    warm_prompts = workload(args.tenants, args.per_tenant, args.prefix_words, args.seed + 1000)[: args.warmup]
    results: dict[str, list[dict[str, Any]]] = {}
    with fleet(specs, log_dir) as servers:
        urls = [s.url for s in servers]
        from tokenizers import Tokenizer

        from kvgate.realvllm.harness import model_dir

        tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        print(f"prompt tokens: mean {statistics.fmean(len(tok.encode(p).ids) for p in prompts):.0f}; "
              f"{len(prompts)} requests; logs {log_dir}", flush=True)  # fmt: skip
        # What one scrape costs a server (kvgate scrapes each every 0.05 s by default).
        scrape_cost(servers[0])
        if args.probe:  # TTFT of a cold prompt vs the same prompt again (prefix hit), straight to vLLM
            for i, p in enumerate(prompts[:4]):
                reset_caches(servers)
                cold, warm = (
                    (lambda r: r["c_first"] - r["send"])(timed(servers[0].url, q)) for q in (p, p + " again")
                )
                print(f"direct probe {i}: miss {1000 * cold:.0f} ms, hit {1000 * warm:.0f} ms", flush=True)
        order = [r for r in args.routers.split(",") if r]
        if args.direct and "direct" not in order:
            order.insert(0, "direct")
        passes = [order if i % 2 == 0 else order[::-1] for i in range(args.repeats)]
        for r in [r for p in passes for r in p]:
            if r.startswith("direct"):
                name = "direct, tenant t -> server t mod 2" if r == "direct-tenant" else "direct, to server 0"
                results.setdefault(name, []).append(
                    run(name, None, servers, prompts, args.gap, warmup=warm_prompts)
                )
                continue
            port = free_ports(1)[0]
            # ``ROUTER/cpuN``: the router (its threads and children) runs on CPU N only, as in
            # ``kvgate bench gateway-overhead``; the client and the vLLM servers stay as they are.
            r, cpus = split_pin(r)
            pinned = "" if cpus is None else PIN_MARK + ",".join(map(str, sorted(cpus)))
            log_tag = "" if cpus is None else "-cpu" + "-".join(map(str, sorted(cpus)))
            if r.startswith("kvgate"):
                at_base = r.endswith("@base") and args.base_src
                env = {**os.environ, "PYTHONPATH": str(Path(args.base_src).resolve())} if at_base else None
                mode = "off" if r.startswith("kvgate-off") else "auto"
                if "-scrape500" in r:  # metrics every 0.5 s, not 0.05 s (vLLM /metrics costs CPU)
                    yml = log_dir / f"{r}.yaml"
                    yml.write_text(json.dumps({"listen": {"host": "127.0.0.1", "port": port},
                                               "scrapeIntervalSeconds": 0.5,
                                               "pools": [{"name": "default", "endpoints": urls,
                                                          "models": [MODEL_NAME]}]}))  # fmt: skip
                    where = ["--config", str(yml)]
                else:
                    where = ["--endpoints", ",".join(urls), "--model", MODEL_NAME, "--port", str(port)]
                cmd = [sys.executable, "-m", "kvgate.cli", "serve", *where, "--kv-events", mode]
                logf = (log_dir / f"{r}{log_tag}.log").open("wb")
                in_client = "-inclient" in r
                with _pinned(cpus):
                    proc = start_kvgate(cmd, logf, env, own_session=not in_client)
                name = f"kvgate ({'--kv-events off' if mode == 'off' else 'default, --kv-events auto'})"
                name += ", scrape 0.5 s" if "-scrape500" in r else ""
                name += IN_CLIENT if in_client else ""
                name += ", base tree" if at_base else ""
            else:
                log = log_dir / f"sglang{log_tag}.log"
                with _pinned(cpus):
                    proc = peers.launch(sg, urls, policy="cache_aware", port=port, log_path=log)
                name = "sglang-router cache_aware"
            name += pinned
            try:
                wait_http(f"http://127.0.0.1:{port}" + ("/health" if r == "sglang" else "/readyz"), proc)
                time.sleep(1.0)
                results.setdefault(name, []).append(
                    run(
                        name,
                        f"http://127.0.0.1:{port}",
                        servers,
                        prompts,
                        args.gap,
                        proc.pid,
                        r == "sglang",
                        warm_prompts,
                    )
                )
            finally:
                proc.terminate()
                proc.wait(20)
        for f in log_dir.glob("kvgate*.log"):
            notes = [ln for ln in f.read_text().splitlines() if "kv-events" in ln or "KV events" in ln]
            print(f.name, notes[:3])
    mean = pass_means(results)
    print(f"mean of {args.repeats} passes:")
    for n, m in mean.items():
        sg = mean.get("sglang-router cache_aware" + pin_suffix(n))
        ratio = (f"  = {m['hit_rate'] / sg['hit_rate']:.2f}x / {m['mean_ttft_ms'] / sg['mean_ttft_ms']:.2f}x"
                 f" / {m['server_ttft_ms'] / sg['server_ttft_ms']:.2f}x sglang") if sg else ""  # fmt: skip
        print(f"{n:34s} hit {m['hit_rate']:.3f}  mean TTFT {m['mean_ttft_ms']:.0f} ms  "
              f"p90 {m['p90_ttft_ms']:.0f} ms  vLLM-side {m['server_ttft_ms']:.0f} ms{ratio}  CPU per pass: "
              f"router {m['router_cpu_s']:.2f} s, vLLM API servers {m['api_cpu_s']:.2f} s")  # fmt: skip
    paired = report(results)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), **code, "started": started, "host": platform.node(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "order": passes,
            "passes": results, "paired": paired}, indent=1))  # fmt: skip
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
