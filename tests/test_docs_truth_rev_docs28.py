"""Review s28-rev-docs28: what docs/ and the CHANGELOG say, checked against the code. Each test failed
on main 56d2baf1 before its correction. No ports, no timing: text checks and one config parse."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from kvgate.config.picker import parse_config
from kvgate.scheduling.framework import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _read(rel: str) -> str:
    return (REPO / rel).read_text(encoding="utf-8")


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_f1_realvllm_part1_does_not_call_the_python_thread_the_tokenizers_pool():
    # §4.18's addendum (tok28) and tokenize.py's docstring: the unnamed `python` thread is the live-check
    # thread; the request path's batch-of-one encode never runs on the library's pool.
    doc = _flat(_read("docs/benchmarks/realvllm.md"))
    assert "The tokenizer's pool thread (`python`: the `tokenizers` library's" not in doc


def test_f2_readme_does_not_say_the_real_apiserver_suite_takes_25_s():
    # docs/kubernetes.md, Time: 33 tests, 206.4 s of pytest (218 s start to stop) / 301.4 s (312 s).
    readme = _flat(_read("README.md"))
    m = re.search(r"`make test-k8s-real`.{0,400}?then ~(\d+) s", readme)
    assert not (m and int(m.group(1)) < 120), m and m.group(0)


def test_f3_kubernetes_md_names_the_real_servers_version_in_the_k8sreal_descriptions():
    ver = re.search(r"^KVER=(\S+)", _read("scripts/real-apiserver.sh"), re.M).group(1)
    assert ver == "1.20.2"
    doc = _flat(_read("docs/kubernetes.md"))
    assert "the 1.20 server with the RBAC authorizer" not in doc
    assert "a real kube-apiserver 1.20 + etcd" not in doc


def test_f5_realvllm_md_names_commits_that_main_holds():
    # a commit id a doc cites as the code that ran must be reachable from main (or name main's copy).
    doc = _read("docs/benchmarks/realvllm.md")
    m = re.search(r"f1702827's `vs_sglang.py` \(the runs' `commit` field\)", doc)
    if m is None:
        return
    ok = (
        subprocess.run(
            ["git", "-C", str(REPO), "merge-base", "--is-ancestor", "f1702827", "HEAD"], capture_output=True
        ).returncode
        == 0
    )
    assert ok or "1a167ea2" in doc[m.start() : m.end() + 200], (
        "f1702827 is on no branch: name main's 1a167ea2"
    )


def test_f6_kubernetes_md_config_pool_example_is_introduced_by_its_own_line():
    doc = _read("docs/kubernetes.md")
    i = doc.index("inferencePool: {name: vllm-llama3-8b-instruct, namespace: default}")
    before = doc[:i].rsplit("```yaml", 1)[0].rstrip().splitlines()[-1]
    assert "test_serve_pool_group_k8s28.py" not in before, before


def _filter_config(params: dict) -> dict:
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "approx-prefix-cache-producer", "name": "apx", "parameters": {}},
            {"type": "prefix-cache-affinity-filter", "parameters": params},
            {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [{"pluginRef": "prefix-cache-affinity-filter"}, {"pluginRef": "max-score-picker"}],
            }
        ],
    }


@pytest.mark.parametrize(
    "params",
    [
        {"prefixMatchInfoProducerName": "apx", "notAKey": 5},
        {"notAKey": 5},
    ],
)
def test_f8_affinity_filter_unknown_key_lists_prefix_match_info_producer_name(params: dict):
    # docs/scheduling.md: the filter takes prefixMatchInfoProducerName; its unknown-key error should list it
    # (fixcfg28b F8 fixed the same for metrics-data-source's `port`).
    with pytest.raises(ConfigError) as e:
        parse_config(_filter_config(params))
    msg = str(e.value)
    assert "notAKey" in msg  # (peakPrefillThroughput was the unknown key here until cfg29 read it)
    assert "prefixMatchInfoProducerName" in msg, msg


def test_f9_no_doc_or_warning_names_the_scrape_scheme_flags_that_do_not_exist():
    from kvgate.extproc.cli import parser as epp_parser
    from kvgate.gateway.cli import _parser as serve_parser

    known = {o for p in (epp_parser(), serve_parser()) for a in p._actions for o in a.option_strings}
    named = {
        "docs/scheduling.md": _read("docs/scheduling.md"),
        "src/kvgate/datalayer/scraper.py": _read("src/kvgate/datalayer/scraper.py"),
    }
    bad = [
        f"{where}: {flag}"
        for where, text in named.items()
        for flag in ("--scrape-scheme", "--scrape-ca")
        if flag in text and flag not in known
    ]
    assert not bad, bad


@pytest.mark.parametrize("rel", ["docs/flowcontrol.md", "docs/benchmarks/flowcontrol.md"])
def test_f7_the_workers_2_summaries_carry_session_28(rel: str):
    doc = _read(rel)
    # the summary / goal cell that lists session 27's --workers 2 figure lists session 28's too
    at = doc.index("1.495x, 1.181-2.011" if rel == "docs/flowcontrol.md" else "(Session 27, `--workers 2`")
    window = doc[max(0, at - 3000) : at + 3000]
    assert "1.347x" in window and "1.157-1.459" in window, f"{rel}: session 28's --workers 2 figure missing"
