"""rev-docs32: docs truth checks for session 32 (each fails on main 97571d4a, the review's read).

Text only: no server, no subprocess. Whitespace is normalised so a rewrap does not matter.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _text(rel: str) -> str:
    return " ".join((ROOT / rel).read_text().split())


def test_eviction_price_profile_is_not_called_todays_default_plus_one_line() -> None:
    """Since bff53adf the default profile sets coldSpread + coldSpreadDecodeHeavy; the opt-in
    evictionPrice profile does not, so it is not "the default profile plus that one line"."""
    policy = (ROOT / "docs/benchmarks/policies/kvgate-eviction-price.yaml").read_text()
    if "coldSpread" in policy:
        return  # (the file was brought up to the new default instead: the claim is true)
    assert "kvgate-eviction-price.yaml` is the default profile plus that one line" not in _text(
        "docs/scheduling.md"
    )


def test_before_flip_policy_files_do_not_say_they_are_main() -> None:
    """The paired baselines of the flip are the profile before session 32, not "as on main"."""
    for rel in (
        "docs/benchmarks/policies/kvgate-before-cold-spread-decode.yaml",
        "docs/benchmarks/policies/kvgate-precise-before-cold-spread-decode.yaml",
    ):
        head = (ROOT / rel).read_text().splitlines()[0]
        assert " as on main " not in head, rel


def test_flowcontrol_workers_summary_names_session_32() -> None:
    """docs/flowcontrol.md's `--workers 2` summary lists sessions 24-29's figures; the goal configuration
    with prefillAlonePick has one, session 32's, not decided (1.397x, 1.220-1.501)."""
    text = _text("docs/flowcontrol.md")
    at = text.index("with `--workers 2` meets the quiet tenants' goal by the declared two-level rule")
    assert "1.397x" in text[at : at + 3000]


def test_wk32_section_does_not_leave_seed_87_one_process_undone() -> None:
    """Seed 87's one-process pair ran (b09560fc: 1.381x); the section's "Not done" still listed the
    same seeds one process, whole."""
    assert "Not done: the same seeds one process (above)" not in _text("docs/benchmarks/flowcontrol.md")


def test_perf32_profile_figures_say_they_cannot_be_rerun() -> None:
    """perf32's cProfile paragraph gives figures (69.5 us, 266 calls) from a harness not kept: a figure
    must name a command anyone can rerun, or say it cannot be."""
    text = _text("docs/benchmarks/gateway.md")
    at = text.index("### Session 32: the proxy compiled")
    at = text.index("a one-off harness, not kept", at)
    assert "cannot be rerun" in text[at : at + 200]


def test_gateway_include_usage_paragraph_says_continuous_usage_stats_goes_false() -> None:
    """qa32a Q3: the include_usage kvgate serve adds goes with continuous_usage_stats false (proxy.py);
    gateway.md's paragraph on the added include_usage did not say so."""
    text = _text("docs/gateway.md")
    at = text.index("For streaming requests that did not ask for usage, the gateway adds")
    assert "continuous_usage_stats" in text[at : at + 600]


def test_gateway_n_sentence_takes_a_string_integer() -> None:
    """qa32a Q1: `"n": "2"` is 2 (lax_int); gateway.md said an integer (2.0 read as 2), else 400."""
    text = _text("docs/gateway.md")
    assert "`n` must be an integer of at least 1 (`2.0` reads as 2, as `max_tokens`), else a 400" not in text
