"""Review s17-k8s F1 and F6 (L5): ``ModelLabels.set_rules`` (k8s17) replaces the rewrite rules' names. A
name that leaves keeps its series ``GRACE_S`` from *now* (F1: ``seen.setdefault`` kept an older stamp, so a
name used a second ago could lose its series at the next sweep), and a name the rules name again is no
longer owed to requests in flight (L5: a stale count, so a later leave owed fewer ends than were in
flight)."""

from __future__ import annotations

from kvgate.openai.labels import GRACE_S, OTHER_MODEL, ModelLabels


def test_a_rule_name_that_leaves_keeps_its_series_grace_s_from_now() -> None:
    """(Review s17-k8s's failing test.) "x" learnt at 0, named by a live rule (known: ``label`` does not
    stamp it), used at 1000, then the rules replace it: its series must outlive a sweep at 1001. Fails
    before: removed at once (``gone == [{'x'}]``)."""
    t = [0.0]
    labels = ModelLabels(["base"], clock=lambda: t[0])
    gone: list[set[str]] = []
    labels.forget.append(lambda names: gone.append(set(names)))
    labels.served("x")  # a model server answered "x": learnt, a label of its own (seen at 0)
    assert labels.label("x") == "x"
    labels.set_rules(["x"])  # a live InferenceModelRewrite now names "x"
    t[0] = 1000.0
    assert labels.label("x") == "x"  # used under the rule a moment ago
    labels.set_rules([])  # the live rules replaced: "x" leaves them
    t[0] = 1001.0
    labels.sweep()
    assert gone == [], f"x's series removed 1 s after it was last used (grace {GRACE_S:g} s): {gone}"
    t[0] = 1000.0 + GRACE_S
    labels.sweep()
    assert gone == [{"x"}]


def test_a_rule_name_added_back_is_no_longer_owed() -> None:
    """The name "x" leaves the rules with one request in flight (owed one end), is named again (a
    label: no longer owed), a second request starts, and it leaves again: both requests in flight are
    owed their label, so after the first ends the second's end is still labelled "x". Fails with the
    ``_owed.pop`` on re-add removed (review s17-k8s mutation L5: the stale count of one was kept, the
    second end got ``other``)."""
    labels = ModelLabels(["base"], clock=lambda: 0.0)
    labels.set_rules(["x"])
    labels.hold("x")
    labels.set_rules([])  # leaves: the one request in flight owed its label
    assert labels.label("x") == "x"
    labels.set_rules(["x"])  # named again
    labels.hold("x")
    labels.set_rules([])  # leaves again, two requests in flight under it
    labels.drop("x")
    assert labels.label("x") == "x", "the second request in flight lost its label before its end"
    labels.drop("x")
    assert labels.label("x") == OTHER_MODEL
