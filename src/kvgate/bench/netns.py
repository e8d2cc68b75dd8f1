"""Simulated clusters, each in its own Linux network namespace, for the live multi-cluster benchmark.

Cluster ``k`` gets namespace ``kvmcl-<pid>-<k>`` joined to the root namespace (where the global gateway,
the delay relay and the load generator run) by a veth pair: ``10.<net>.k.1`` on the root side,
``10.<net>.k.2`` (the cluster's "node" address) inside. Its pods' address ``10.<net+1>.k.2`` sits on the
namespace's loopback: the cluster's own EPP and gateway reach the pods there directly, while from the root
namespace the same address is answered by the delay relay (the address is added to the root namespace's
loopback too), which forwards to the pods through the veth with the cluster's round trip added. So every
path from the global gateway into a cluster (aggregate, EPP, health, cluster gateway, pods) pays the RTT,
and nothing inside a cluster does. ``10.<net>/16`` and ``10.<net+1>/16`` are otherwise unreachable from the
root namespace (no leak through its default route).

Needs root and iproute2; ``unavailable()`` says why not. Fixed ports are safe inside each fresh namespace.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass

from kvgate import lifeline

SIM_PORT, EPP_PORT, HEALTH_PORT, METRICS_PORT, GW_PORT, GW_ADMIN_PORT = 8001, 9002, 9003, 9090, 8080, 9091


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (None = they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, e.g. with sudo)"
    if shutil.which("ip") is None:
        return "no `ip` binary (install iproute2)"
    probe = f"kvmcl-probe-{os.getpid()}"
    r = subprocess.run(
        lifeline.die_with_parent_argv(["ip", "netns", "add", probe]), capture_output=True, text=True
    )
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(lifeline.die_with_parent_argv(["ip", "netns", "del", probe]), capture_output=True)
    return None


def ip(*args: str, ns: str | None = None, check: bool = True) -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    r = subprocess.run(lifeline.die_with_parent_argv(cmd), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def free_net() -> int:
    """An even ``x`` such that neither 10.x/16 nor 10.(x+1)/16 is routed in the root namespace."""
    routes = subprocess.run(
        lifeline.die_with_parent_argv(["ip", "route"]), capture_output=True, text=True
    ).stdout
    addrs = subprocess.run(
        lifeline.die_with_parent_argv(["ip", "addr"]), capture_output=True, text=True
    ).stdout
    rng = random.Random(os.getpid() ^ 0x5EED)
    for _ in range(100):
        x = rng.randrange(64, 250, 2)
        if not any(f"10.{n}." in t for n in (x, x + 1) for t in (routes, addrs)):
            return x
    raise RuntimeError("no free 10.x/16 subnet pair")


def add_namespace(ns: str, veth: str, net: int, index: int) -> None:
    """Namespace ``ns`` joined to the root namespace by veth ``veth`` (root side ``10.<net>.<index>.1``,
    ``10.<net>.<index>.2`` inside, the default route), with the pods' address ``10.<net+1>.<index>.2`` on
    its loopback. Where the root namespace reaches the pods' address is the caller's choice."""
    peer = veth + "p"
    ip("netns", "add", ns)
    ip("link", "add", veth, "type", "veth", "peer", "name", peer)
    ip("link", "set", peer, "netns", ns)
    ip("addr", "add", f"10.{net}.{index}.1/24", "dev", veth)
    ip("link", "set", veth, "up")
    ip("addr", "add", f"10.{net}.{index}.2/24", "dev", peer, ns=ns)
    ip("link", "set", peer, "up", ns=ns)
    ip("link", "set", "lo", "up", ns=ns)
    ip("addr", "add", f"10.{net + 1}.{index}.2/32", "dev", "lo", ns=ns)  # the pods' own address
    ip("route", "add", "default", "via", f"10.{net}.{index}.1", ns=ns)


@dataclass(slots=True)
class NsCluster:
    """One cluster's namespace and addresses (processes are the caller's: see ``exec_prefix``)."""

    name: str
    index: int  # 1..250
    net: int
    ns: str = ""
    _created: bool = False

    @property
    def addr(self) -> str:
        return f"10.{self.net}.{self.index}.2"

    @property
    def pod_addr(self) -> str:
        return f"10.{self.net + 1}.{self.index}.2"

    @property
    def veth(self) -> str:
        return f"kvl{os.getpid() % 100000}c{self.index}"

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def create(self) -> None:
        self.ns = f"kvmcl-{os.getpid()}-{self.index}"
        self._created = True  # destroy() is safe on a half-made namespace
        add_namespace(self.ns, self.veth, self.net, self.index)
        # The same address in the root namespace, where the delay relay listens for the pods.
        ip("addr", "add", f"{self.pod_addr}/32", "dev", "lo")

    def cut(self) -> None:
        """A partition: the veth's namespace side down, the root side's neighbour entry for the cluster
        pinned. Packets into the cluster then vanish (the root side sends them into a peer that is down,
        with no ARP to fail), so a new connection hangs until its connect timeout and an open one learns
        it only by its own timeouts, as across a real cut link; the cluster's processes keep running.
        (Downing the root side instead removed the route: the ``unreachable`` one of ``isolate`` then
        failed every new connect at once with EHOSTUNREACH, which a real cut link does not; leaving the
        ARP entry to expire fails them with EHOSTUNREACH after ~3 s.)"""
        peer = self.veth + "p"
        mac = subprocess.run(
            lifeline.die_with_parent_argv([*self.exec_prefix(), "cat", f"/sys/class/net/{peer}/address"]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        ip("neigh", "replace", self.addr, "lladdr", mac, "dev", self.veth, "nud", "permanent")
        ip("link", "set", peer, "down", ns=self.ns)

    def heal(self) -> None:
        ip("link", "set", self.veth + "p", "up", ns=self.ns)  # its address's route comes back with it
        ip("route", "replace", "default", "via", f"10.{self.net}.{self.index}.1", ns=self.ns)  # not this one
        ip("neigh", "del", self.addr, "dev", self.veth, check=False)  # learned by ARP again

    def destroy(self) -> None:
        if not self._created:
            return
        ip("addr", "del", f"{self.pod_addr}/32", "dev", "lo", check=False)
        ip("link", "del", self.veth, check=False)
        subprocess.run(lifeline.die_with_parent_argv(["ip", "netns", "del", self.ns]), capture_output=True)
        self._created = False


def isolate(net: int) -> None:
    """No path to the clusters' subnets except the veths: without these, traffic to an unrouted pod (or to a
    cut cluster) would follow the root namespace's default route out of the machine."""
    for x in (net, net + 1):
        ip("route", "add", "unreachable", f"10.{x}.0.0/16")


def unisolate(net: int) -> None:
    for x in (net, net + 1):
        ip("route", "del", "unreachable", f"10.{x}.0.0/16", check=False)
