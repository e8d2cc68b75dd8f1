"""Review s27-rev-a27 F1: ``kvgate.bench.ports.claim`` opens the claim file ``O_RDWR``; the file is created
``0o666`` less the umask (``0o644`` under the usual 022), so another user's run (CI as root beside an
engineer's run, or the reverse) cannot open it, and ``claim`` takes that ``OSError`` for "the folder cannot
be written" and answers True: the other user's process hands out a port this one claimed, the race
428bfbbf set out to end. ``flock`` needs no write access (a read-only fd locks).

Root: the other user is ``nobody`` (the child drops to it after importing). Not root: the same refusal,
made by a claim file without write permission (the owner's own open ``O_RDWR`` fails as another user's
would). Fails on main b2c4fe25 (the child answers True)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kvgate.bench import ports

PORT = 1  # (a number only: claim binds nothing; the claims folder is this test's own)

_CHILD = """import os, sys
from kvgate.bench import ports
if sys.argv[2] == "drop":
    try:
        os.setgid(65534)
        os.setuid(65534)
    except OSError as e:  # (a container without CAP_SETUID, or no uid 65534 in its user namespace)
        print("cannot drop:", e, flush=True)
        sys.exit(0)
print(ports.claim(int(sys.argv[1])), flush=True)
"""


def test_a_port_claimed_by_another_user_is_not_claimed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    root = os.geteuid() == 0
    tmp = Path(tempfile.mkdtemp(prefix="rev-a27-claims-"))
    tmp.chmod(0o1777)  # (as /tmp: every user's runs claim under it)
    claims = tmp / "kvgate-free-ports"
    monkeypatch.setattr(ports, "CLAIMS", str(claims))
    old = os.umask(0o022)  # (the usual umask: the claim file is 0o644)
    try:
        assert ports.claim(PORT)  # this process holds it
    finally:
        os.umask(old)
    try:
        path = claims / str(PORT)
        if not root:  # (the owner's own O_RDWR open refused, as another user's is)
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        env = {**os.environ, "TMPDIR": str(tmp)}
        child = subprocess.run([sys.executable, "-c", _CHILD, str(PORT), "drop" if root else "stay"],
                               capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
        assert child.returncode == 0, child.stderr[-1500:]
        if child.stdout.startswith("cannot drop:"):
            pytest.skip(f"root here cannot become another user: {child.stdout.strip()}")
        assert child.stdout.strip() == "False", (
            "another user's process claimed a port this process holds (its open of the claim file failed, "
            f"taken for 'cannot be written'): {child.stdout!r}"
        )
    finally:
        ports._release(PORT)
        for f in claims.iterdir():
            f.unlink()
        claims.rmdir()
        tmp.rmdir()
