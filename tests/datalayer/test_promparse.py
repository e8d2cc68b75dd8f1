"""The hand-written metrics reader agrees with prometheus_client's parser on what it extracts."""

from __future__ import annotations

import math
import tracemalloc
from collections import OrderedDict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from kvgate.datalayer import promparse
from kvgate.datalayer.promparse import find_samples

NAMES = ["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc", "x_total"]

label_names = st.sampled_from(["model_name", "engine", "le", "a_b", "block_size"])
label_values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12
)
values = st.one_of(
    st.integers(-(10**9), 10**9).map(float),
    st.floats(allow_nan=False, allow_infinity=True, width=64),
)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


@st.composite
def pages(draw: Any) -> str:
    lines: list[str] = []
    for name in draw(st.lists(st.sampled_from([*NAMES, "vllm:num_requests_waiting_by_reason"]), max_size=6)):
        lines.append(f"# HELP {name} some help")
        lines.append(f"# TYPE {name} gauge")
        seen: set[tuple[tuple[str, str], ...]] = set()
        for _ in range(draw(st.integers(1, 3))):
            labels = draw(st.dictionaries(label_names, label_values, max_size=3))
            key = tuple(sorted(labels.items()))
            if key in seen:
                continue
            seen.add(key)
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lab = "{" + body + "}" if labels or draw(st.booleans()) else ""
            lines.append(f"{name}{lab} {_fmt(draw(values))}")
    return "\n".join(lines) + "\n"


def _reference(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


@settings(max_examples=300, deadline=None)
@given(pages())
def test_matches_prometheus_client(text: str) -> None:
    ref = _reference(text)
    mine = find_samples(text, NAMES)
    again = find_samples(text, NAMES)  # every label set now from the cache
    for name in NAMES:
        assert sorted(map(repr, mine.get(name, []))) == sorted(map(repr, ref.get(name, [])))
        assert sorted(map(repr, again.get(name, []))) == sorted(map(repr, ref.get(name, [])))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_never_raises_on_garbage(text: str) -> None:
    find_samples(text, NAMES)
    find_samples("vllm:num_requests_waiting" + text, NAMES)


def test_exact_name_not_prefix_and_timestamps() -> None:
    text = (
        'vllm:num_requests_waiting_by_reason{reason="x"} 9\n'
        'vllm:num_requests_waiting{model_name="m"} 3 1700000000000\n'
        'vllm:num_requests_waiting{model_name="n",engine="1"} 4\r\n'
    )
    got = find_samples(text, ["vllm:num_requests_waiting"])
    assert got == {
        "vllm:num_requests_waiting": [({"model_name": "m"}, 3.0), ({"model_name": "n", "engine": "1"}, 4.0)]
    }


def test_escaped_label_values() -> None:
    text = 'x_total{a="q\\"uo\\\\te\\nnl",b=",}"} 1\n'
    assert find_samples(text, ["x_total"]) == {"x_total": [({"a": 'q"uo\\te\nnl', "b": ",}"}, 1.0)]}


def test_a_label_set_seen_before_is_not_parsed_again(monkeypatch: Any) -> None:
    """vLLM's cache_config_info carries ~40 labels, the same every scrape: parsed once, then looked up."""
    calls = [0]
    real = promparse._parse_labels

    def counting(line: str, i: int) -> tuple[dict[str, str], int]:
        calls[0] += 1
        return real(line, i)

    monkeypatch.setattr(promparse, "_parse_labels", counting)
    _empty_cache(monkeypatch)
    info = ",".join(f'k{i}="v{i}"' for i in range(40))
    page = 'vllm:cache_config_info{%s} 1.0\nvllm:num_requests_waiting{model_name="m"} %d\n'
    first = find_samples(page % (info, 1), ["vllm:cache_config_info", "vllm:num_requests_waiting"])
    assert calls[0] == 2
    second = find_samples(page % (info, 7), ["vllm:cache_config_info", "vllm:num_requests_waiting"])
    assert calls[0] == 2  # both label sets from the cache; the values are read fresh
    assert second["vllm:num_requests_waiting"] == [({"model_name": "m"}, 7.0)]
    assert first["vllm:cache_config_info"] == second["vllm:cache_config_info"]
    # A caller changing its labels does not change what the next parse returns.
    second["vllm:cache_config_info"][0][0]["k0"] = "changed"
    third = find_samples(page % (info, 7), ["vllm:cache_config_info"])
    assert third["vllm:cache_config_info"][0][0]["k0"] == "v0"


def _empty_cache(monkeypatch: Any, bound: int | None = None) -> None:
    monkeypatch.setattr(promparse, "_LABELS", OrderedDict())
    monkeypatch.setattr(promparse, "_label_bytes", 0)
    if bound is not None:
        monkeypatch.setattr(promparse, "LABEL_CACHE_BYTES", bound)


def test_the_label_cache_is_bounded_by_measured_size(monkeypatch: Any) -> None:
    _empty_cache(monkeypatch, bound=20_000)
    for i in range(500):  # a label whose value changes every scrape
        got = find_samples(f'x_total{{model_name="m",req="{i:04d}"}} {i}\n', ["x_total"])
        assert got == {"x_total": [({"model_name": "m", "req": f"{i:04d}"}, float(i))]}
        assert promparse._label_bytes <= 20_000
        assert promparse._label_bytes == sum(size for _, size in promparse._LABELS.values())
    assert len(promparse._LABELS) > 10  # evicted one by one, not cleared


def test_the_measured_size_is_what_the_cache_holds(monkeypatch: Any) -> None:
    """The bound is real memory: tracemalloc's count of what the cache holds is within it."""
    bound = 1 << 20
    _empty_cache(monkeypatch, bound=bound)
    lines = [f'x{{model_name="m",engine="0",lora="a{i:06d}"}} 1\n' for i in range(6000)]
    tracemalloc.start()
    try:
        for line in lines:
            find_samples(line, ["x"])
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert promparse._label_bytes <= bound
    assert 0.7 * promparse._label_bytes <= traced <= 1.1 * bound, (traced, promparse._label_bytes)


def test_label_sets_seen_every_scrape_stay_while_others_churn(monkeypatch: Any) -> None:
    """Least recently used first out: a label set every scrape renders is parsed once, however many
    one-off label sets pass through a cache too small for them (a clear-all would re-parse it)."""
    _empty_cache(monkeypatch, bound=40_000)  # room for ~60 of these label sets
    calls: list[str] = []
    real = promparse._parse_labels

    def counting(line: str, i: int) -> tuple[dict[str, str], int]:
        calls.append(line[i:])
        return real(line, i)

    monkeypatch.setattr(promparse, "_parse_labels", counting)
    hot = 'vllm:num_requests_waiting{engine="0",model_name="m"} 1\n'
    for scrape in range(300):
        churn = f'vllm:lora_requests_info{{running_lora_adapters="a{scrape}"}} 1\n'
        find_samples(hot + churn, ["vllm:num_requests_waiting", "vllm:lora_requests_info"])
    assert len(promparse._LABELS) < 300  # the churn did pass the bound
    assert sum(c.startswith('{engine="0"') for c in calls) == 1
    assert len(calls) == 301


def test_a_huge_label_set_is_not_cached(monkeypatch: Any) -> None:
    _empty_cache(monkeypatch, bound=10_000)
    find_samples('y{a="1"} 1\n', ["y"])
    big = ",".join(f'k{i}="v{i}"' for i in range(200))
    assert find_samples(f"x{{{big}}} 1\n", ["x"])["x"][0][0]["k199"] == "v199"
    assert list(promparse._LABELS) == ['{a="1"}']
