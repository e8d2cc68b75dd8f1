#!/bin/bash
# Review s24-rev-fixqa24 R4, run as `flock /work/team/live.lock <this>` from the fixqa24b worktree.
# /tmp/fixqa24b/src-on: a copy of src/ with, in kvgate/gateway/access.py, `ACCESS.setLevel(logging.INFO)`
# after ACCESS's definition and `stderr()` returning open("/tmp/fixqa24b/on.log", "a", buffering=1 << 17).
# /tmp/rev-fixqa24/src-info: the review's copy of b10fb7c4 (kvgate.access at INFO, a logging FileHandler).
cd /work/wt/fixqa24b
rm -f /tmp/fixqa24b/on.log
uptime; echo "=== kvgate-rr = fixqa24b src (access log off: --log-level WARNING); @base = the same src, kvgate.access at INFO, lines to a file"
PYTHONPATH=$PWD/src timeout 400 /work/main/.venv/bin/python -m kvgate.cli bench gateway-overhead --paths kvgate-rr,kvgate-rr@base --requests 20000 --repeats 3 --streams 0 --base-src /tmp/fixqa24b/src-on 2>&1 | grep -v "^      "
uptime; wc -l /tmp/fixqa24b/on.log; head -2 /tmp/fixqa24b/on.log
echo "=== same, @base = the review's src-info (b10fb7c4, logging + FileHandler)"
PYTHONPATH=$PWD/src timeout 400 /work/main/.venv/bin/python -m kvgate.cli bench gateway-overhead --paths kvgate-rr,kvgate-rr@base --requests 20000 --repeats 3 --streams 0 --base-src /tmp/rev-fixqa24/src-info 2>&1 | grep -v "^      "
uptime
uptime; PYTHONPATH=$PWD/src /work/main/.venv/bin/python /tmp/fixqa24b/micro.py; uptime
