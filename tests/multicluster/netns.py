"""Simulated clusters, each in its own network namespace, for the multi-cluster tests and the live run.

Per cluster ``k`` a namespace joined to the root namespace (where the global gateways run) by a veth pair
``10.<net>.k.1`` (root side) / ``10.<net>.k.2`` (cluster side). Inside it, the real CLIs:
- ``kvgate sim``: the pods, on ``10.<net+1>.k.2`` (an address on the namespace's loopback): reachable
  from the root namespace only when the test adds a route to that subnet through the veth
  (``pods_routed``), so Endpoint mode must fall back to Parent mode where they are not;
- ``kvgate epp``: the cluster's EPP (ext_proc, gRPC health, metrics and ``/v1/pool/aggregate``);
- ``kvgate serve``: the cluster-local gateway (Parent mode).
Fixed ports are safe here: every listener is inside a fresh namespace of its own, where nothing else binds.
A link cut is ``ip link set <veth> down`` on the root side.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from kvgate.bench.netns import (
    EPP_PORT,
    GW_ADMIN_PORT,
    GW_PORT,
    HEALTH_PORT,
    METRICS_PORT,
    SIM_PORT,
    NsCluster,
    add_namespace,
    ip,
)

MODEL = "sim-model"


@dataclass(slots=True)
class Cluster(NsCluster):
    """``NsCluster``'s namespace, but the pods' subnet routed through the veth (``pods_routed``) rather than
    answered in the root namespace, and the cluster's processes run here."""

    replicas: int = 2
    pods_routed: bool = True
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spec(self, rtt_ms: float = 1.0) -> dict[str, object]:
        return {
            "name": self.name,
            "aggregate": f"http://{self.addr}:{METRICS_PORT}/v1/pool/aggregate",
            "gateway": f"{self.addr}:{GW_PORT}",
            "epp": f"{self.addr}:{EPP_PORT}",
            "health": f"{self.addr}:{HEALTH_PORT}",
            "rtt_ms": rtt_ms,
            "priority": self.index,
        }

    # --- network ---------------------------------------------------------------------------------
    def create(self) -> None:
        self.ns = f"kvmc-{os.getpid()}-{self.index}"
        self._created = True
        add_namespace(self.ns, self.veth, self.net, self.index)
        if self.pods_routed:
            ip("route", "add", f"10.{self.net + 1}.{self.index}.0/24", "via", self.addr)

    def heal(self) -> None:  # (cut: NsCluster's, a silent drop)
        NsCluster.heal(self)
        if self.pods_routed:  # (kept by the root side, which stays up; replaced should it be gone)
            subprocess.run(
                ["ip", "route", "replace", f"10.{self.net + 1}.{self.index}.0/24", "via", self.addr],
                capture_output=True,
            )

    def destroy(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        NsCluster.destroy(self)  # (no zero-argument super() in a slots dataclass)

    # --- processes -------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        env = dict(os.environ)
        log = open(Path(os.environ.get("KVMC_LOG_DIR", "/tmp")) / f"{self.ns}-{name}.log", "wb")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [*self.exec_prefix(), sys.executable, "-m", "kvgate.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def start_sim(self) -> None:
        self._spawn(
            "sim",
            [
                "sim",
                "--replicas",
                str(self.replicas),
                "--profile",
                "llama3-8b-h100",
                "--host",
                self.pod_addr,
                "--base-port",
                str(SIM_PORT),
                "--model",
                MODEL,
                "--time-scale",
                "20",
                "--log-level",
                "WARNING",
            ],
        )

    def pods(self) -> str:
        return ",".join(f"{self.pod_addr}:{SIM_PORT + i}" for i in range(self.replicas))

    def start_epp(self) -> None:
        self._spawn(
            "epp",
            [
                "epp",
                "--endpoints",
                self.pods(),
                "--model",
                MODEL,
                "--pool-name",
                self.name,
                "--host",
                "0.0.0.0",
                "--port",
                str(EPP_PORT),
                "--grpc-health-port",
                str(HEALTH_PORT),
                "--metrics-port",
                str(METRICS_PORT),
                "--plaintext",
                "--log-level",
                "warning",
            ],
        )

    def start_gateway(self) -> None:
        eps = ",".join(f"http://{a}" for a in self.pods().split(","))
        self._spawn(
            "gateway",
            [
                "serve",
                "--endpoints",
                eps,
                "--model",
                MODEL,
                "--host",
                "0.0.0.0",
                "--port",
                str(GW_PORT),
                "--admin-port",
                str(GW_ADMIN_PORT),
                "--log-level",
                "WARNING",
            ],
        )

    def kill(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(60)

    def pause(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)


async def wait_http(url: str, limit_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"{url} not up within {limit_s:.0f}s")
            await asyncio.sleep(0.2)


async def wait_ready(c: Cluster, limit_s: float = 90.0) -> None:
    # The gateway is reached from the root namespace; the pods are checked through their EPP's aggregate.
    await wait_http(f"http://{c.addr}:{METRICS_PORT}/metrics", limit_s)
    await wait_http(f"http://{c.addr}:{GW_ADMIN_PORT}/healthz", limit_s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    from kvgate.datalayer.aggregate import decode

    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"http://{c.addr}:{METRICS_PORT}/v1/pool/aggregate") as r:
                if decode(await r.read()).ready_endpoints == c.replicas:
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"{c.name}: pods not ready within {limit_s:.0f}s")
            await asyncio.sleep(0.2)
