"""Responses follow-ups (``previous_response_id``) as the conversation (#16, prev24): the earlier turn's
tokens and prefix blocks, kept bounded (``ResponseTurns``), continued by the prefix scorer."""

from __future__ import annotations

from array import array

from kvgate.openai.responses import ResponseTurns, Turn, finished_turn, follow_up
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, prefix_match
from kvgate.scheduling.prefix import block_hashes
from kvgate.scheduling.types import Conversation, InferenceRequest, Usage
from scheduling.helpers import cycle, ep, handle


def _turn(tokens: int) -> Turn:
    return Turn(tokens, array("Q", [1, 2]), 64, False, "m")


def test_the_turns_are_an_lru_bounded_by_their_cap_and_expire() -> None:
    now = [0.0]
    turns = ResponseTurns(max_entries=3, ttl_s=10.0, clock=lambda: now[0])
    for i in range(3):
        turns.remember(f"r{i}", _turn(i))
    assert turns.get("r0") is not None  # (read: the most recent now)
    turns.remember("r3", _turn(3))
    assert len(turns) == 3 and turns.get("r1") is None and turns.get("r0") is not None
    now[0] = 10.0
    assert turns.get("r3") is None and len(turns) == 2
    turns.remember("x" * 257, _turn(9))  # (an id past 256 characters is not kept)
    assert len(turns) == 2
    off = ResponseTurns(max_entries=0)
    off.remember("r", _turn(1))
    assert len(off) == 0 and off.get("r") is None


def test_a_follow_up_adds_its_earlier_turn_and_a_stored_turn_is_marked() -> None:
    req = InferenceRequest("q", "m", prompt_tokens=7)
    follow_up(req, None, _turn(100))
    assert req.prompt_tokens == 107
    assert req.conversation is not None and list(req.conversation.head) == [1, 2]
    fresh = InferenceRequest("q", "m", prompt_tokens=7)
    follow_up(fresh, True, None)
    assert fresh.prompt_tokens == 7 and fresh.conversation == Conversation()
    unstored = InferenceRequest("q", "m", prompt_tokens=7)
    follow_up(unstored, False, None)  # (``store: false``: nothing to follow up on later)
    assert unstored.conversation is None


def test_a_finished_turn_counts_its_usage_else_its_estimate() -> None:
    req = InferenceRequest(
        "q", "m", prompt_tokens=50, conversation=Conversation(chain=[5, 6], chain_chunk=64)
    )
    assert finished_turn(req, Usage(40, 10)) is None  # (its id not read: nothing to key it by)
    assert req.conversation is not None
    req.conversation.response_id = "resp_1"
    turn = finished_turn(req, Usage(40, 10))
    assert turn is not None and turn.tokens == 50 and list(turn.hashes) == [5, 6] and turn.chunk == 64
    turn = finished_turn(req, None)
    assert turn is not None and turn.tokens == 50  # (the estimate, the earlier turns in it)


def test_the_scorer_continues_the_earlier_turns_chain_and_matches_its_holder() -> None:
    a, b = ep("a:1"), ep("b:1")
    s = PrefixCacheScorer("p", handle())
    first = cycle("w" * 64 * 8, conversation=Conversation())
    s.prepare(first, [a, b])
    s.on_picked(first, a)
    conv = first.request.conversation
    assert conv is not None and len(conv.chain) == 8 and conv.chain_chunk == 64
    # The follow-up's new input alone, 2 blocks: its chain is the earlier 8 then 2 chained after them.
    head = Conversation(100, array("Q", conv.chain), conv.chain_chunk, conv.chain_by_ids, "m")
    nxt = cycle("n" * 64 * 2, conversation=head)
    s.prepare(nxt, [a, b])
    m = prefix_match(nxt)
    assert m is not None and m.hashes[:8] == list(conv.chain)
    assert m.hashes[8:] == block_hashes("m", "n" * 128, 64, seed=conv.chain[-1])
    assert s.score(nxt, [a, b]) == [0.8, 0.0]
    # Keyed otherwise (another block size, or token ids): the head is not used.
    other = Conversation(100, array("Q", conv.chain), 128, False, "m")
    c = cycle("n" * 64 * 2, conversation=other)
    s.prepare(c, [a, b])
    m = prefix_match(c)
    assert m is not None and m.total == 2 and s.score(c, [a, b]) == [0.0, 0.0]


def test_a_long_conversation_is_cut_at_the_scorers_window() -> None:
    a = ep("a:1")
    s = PrefixCacheScorer("p", handle(), max_blocks=10)
    head = Conversation(100, array("Q", range(1, 10)), 64, False, "m")  # 9 of the 10 blocks
    c = cycle("n" * 64 * 5, conversation=head)
    s.prepare(c, [a])
    m = prefix_match(c)
    assert m is not None and m.total == 10 and m.hashes[:9] == list(range(1, 10))
    full = Conversation(100, array("Q", range(1, 13)), 64, False, "m")
    c = cycle("n" * 64 * 5, conversation=full)
    s.prepare(c, [a])
    m = prefix_match(c)
    assert m is not None and m.hashes == list(range(1, 11))


def test_a_kept_turn_holds_at_most_the_default_windows_blocks() -> None:
    """The bound per turn (~2.3 KB) holds whatever ``maxPrefixBlocksToMatch`` a scorer was given."""
    conv = Conversation(chain=list(range(1, 1001)), chain_chunk=64, response_id="resp_1")
    turn = finished_turn(InferenceRequest("q", "m", prompt_tokens=5, conversation=conv), Usage(4000, 10))
    assert turn is not None and list(turn.hashes) == list(range(1, 257))
