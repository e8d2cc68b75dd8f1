"""``gateway.shared_responses``: the fleet's table of Responses ids -> homes (one real shared-memory segment,
the supervisor's view and two workers' in one process; time injected). End to end with two worker
processes: ``test_workers_responses.py``."""

from __future__ import annotations

from kvgate.gateway import shared_responses as sr
from kvgate.gateway.shared_responses import FleetHomes, FleetModels, SharedResponses


def test_an_id_one_worker_made_is_found_by_the_other_until_it_expires(shared_views) -> None:
    _, w0, w1 = shared_views
    assert w0.remember("resp_a", "10.0.0.1:8000", now=100.0)
    assert w1.find("resp_a", now=101.0) == ("10.0.0.1:8000", None)
    assert w0.find("resp_a", now=101.0) == ("10.0.0.1:8000", None)
    assert w1.find("resp_b", now=101.0) is None
    assert w1.find("resp_a", now=100.0 + sr.HOMES_TTL_S) is None  # (expired: one TTL after it was made)


def test_models_of_a_rewritten_id_are_shared_and_a_reused_pair_reads_as_none(shared_views) -> None:
    _, w0, w1 = shared_views
    w0.remember("resp_a", "h:1", now=0.0)
    assert w0.remember_models("resp_a", ("m2", "alias"))
    assert w1.find("resp_a", now=1.0) == ("h:1", ("m2", "alias"))
    assert not w0.remember_models("resp_unknown", ("m2", "alias"))  # (no entry: not remembered first)
    # Every pair slot taken by others: the first one's slot is reused, its entry reads as no pair.
    for i in range(sr.PAIRS):
        w0.remember(f"resp_{i}", "h:1", now=0.0)
        w0.remember_models(f"resp_{i}", (f"t{i}", "alias"))
    assert w1.find("resp_a", now=1.0) == ("h:1", None)
    assert w1.find(f"resp_{sr.PAIRS - 1}", now=1.0) == ("h:1", (f"t{sr.PAIRS - 1}", "alias"))


def test_a_restarted_worker_continues_its_region(shared_views) -> None:
    owner, w0, w1 = shared_views
    w0.remember("resp_a", "h:1", now=0.0)
    w0.remember_models("resp_a", ("m2", "alias"))
    again = SharedResponses.attach(owner.shm.name, 2, 0)  # (worker 0's successor)
    try:
        assert again.find("resp_a", now=1.0) == ("h:1", ("m2", "alias"))
        again.remember("resp_b", "h:2", now=1.0)
        assert again.remember_models("resp_b", ("m2", "alias"))  # the same pair, not a new one
        assert again._pairs == w0._pairs
        assert w1.find("resp_b", now=2.0) == ("h:2", ("m2", "alias"))
    finally:
        again.close()


def test_an_entry_being_written_is_not_read(shared_views) -> None:
    _, w0, w1 = shared_views
    w0.remember("resp_a", "h:1", now=0.0)
    b = w0._own(sr.response_key("resp_a"))
    assert b is not None
    w0._words[b] += 1  # (odd: a write in progress)
    assert w1.find("resp_a", now=1.0) is None
    w0._words[b] += 1
    assert w1.find("resp_a", now=1.0) == ("h:1", None)


def test_bounded_each_worker_keeps_its_share_the_latest_first(shared_views) -> None:
    _, w0, w1 = shared_views
    n = w0.slots + w0.slots // 2
    for i in range(n):
        w0.remember(f"resp_{i}", "h:1", now=i / 1000)  # (all within the TTL)
    found = [i for i in range(n) if w1.find(f"resp_{i}", now=n / 1000) is not None]
    assert len(found) <= w0.slots
    assert found[-1] == n - 1 and len(found) > w0.slots * 0.9  # (sets fill unevenly: the oldest go)
    assert w0.slots * 2 >= sr.HOMES_MAX  # (the fleet keeps as many as one process)


def test_the_proxys_maps_read_their_own_first_then_the_fleets(shared_views) -> None:
    _, w0, w1 = shared_views
    now = [5.0]
    homes0, models0 = FleetHomes(w0, lambda: now[0]), FleetModels(w0, lambda: now[0])
    homes1, models1 = FleetHomes(w1, lambda: now[0]), FleetModels(w1, lambda: now[0])
    homes0.remember("resp_a", "h:1")
    models0.remember("resp_a", ("m2", "alias"))
    assert (homes1.home("resp_a"), models1.home("resp_a")) == ("h:1", ("m2", "alias"))
    long = "h" * (sr.ADDR_BYTES + 1)  # too long for the table: only the worker that made it knows it
    homes0.remember("resp_b", long)
    assert homes0.home("resp_b") == long and homes1.home("resp_b") is None
    homes1.remember("resp_c", "h:2")  # no rewrite: no pair
    assert homes0.home("resp_c") == "h:2" and models0.home("resp_c") is None
