"""``vs_sglang.py`` starts kvgate as sglang-router is started: in a session (an autogroup) of its own.

With the kernel's autogroup scheduling a session is one scheduling group; ``peers.launch`` starts
sglang-router with ``start_new_session`` and the harness each vLLM server, while the script used to start
``kvgate serve`` in the benchmark client's own session. A real child process is started through the
script's own launch function and asked for its session; no vLLM needed.
"""

from __future__ import annotations

import os
import subprocess
import sys

from realvllm.test_vs_sglang_target import _script

ASK = [sys.executable, "-c", "import os; print(os.getsid(0), os.getpid())"]


def _session_of_child(own_session: bool | None) -> tuple[int, int]:
    vs = _script()
    kwargs = {} if own_session is None else {"own_session": own_session}
    proc = vs.start_kvgate(ASK, subprocess.PIPE, None, **kwargs)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    sid, pid = map(int, out.split())
    return sid, pid


def test_kvgate_runs_in_a_session_of_its_own_by_default() -> None:
    sid, pid = _session_of_child(None)
    assert sid != os.getsid(0)
    assert sid == pid  # the leader of its own session, as sglang-router (peers.launch) and each vLLM server


def test_inclient_keeps_the_clients_session() -> None:
    sid, _ = _session_of_child(False)
    assert sid == os.getsid(0)


def test_the_inclient_router_names_its_pass() -> None:
    vs = _script()
    assert vs.IN_CLIENT == ", in the client's session"
    assert vs.autogroup(None) == ""
    assert vs.autogroup(os.getpid()) == "" or vs.autogroup(os.getpid()).startswith("/autogroup-")


def test_pass_means_skip_what_is_not_a_number() -> None:
    vs = _script()
    passes = [
        {
            "hit_rate": 0.5,
            "mean_ttft_ms": 20.0,
            "records": [],
            "autogroups": {"router": "/autogroup-1 nice 0"},
        },
        {
            "hit_rate": 0.7,
            "mean_ttft_ms": 30.0,
            "records": [],
            "autogroups": {"router": "/autogroup-2 nice 0"},
        },
    ]
    assert vs.pass_means({"kvgate": passes}) == {"kvgate": {"hit_rate": 0.6, "mean_ttft_ms": 25.0}}
