"""Seeded, locally generated benchmark workloads (no downloads).

Every prompt is built from token ids first and rendered as text second: id ``i`` becomes a fixed
three-letter lower-case word, words are joined by single spaces, so one id is ~4 characters and one
token for the simulator's tokenizer. The fleet simulator feeds the ids to the engine directly and the
same text to the picker's prefix hashing, so both sides agree on what is shared.

Workloads are generators of ``RequestSpec`` (bounded memory however many requests a run sends);
arrival times come from the load generator (open or closed loop) unless a spec carries its own
``at`` (bursts).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = 26**3  # distinct words; ids are taken modulo this
_WORDS: list[str] = [a + b + c for a in _LETTERS for b in _LETTERS for c in _LETTERS]


def render(token_ids: list[int]) -> str:
    """Text for token ids: one three-letter word per id (~4 chars/token with the trailing space)."""
    return " ".join(_WORDS[i % VOCAB] for i in token_ids)


def random_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


# English-ish words for the real-tokenizer text workloads (a real tokenizer splits the three-letter ids
# above into pieces; these are one or two tokens each with the tiny Llama's tokenizer).
TENANT_WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
    "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
    "whiskey", "xray", "yankee", "zulu", "red", "green", "blue", "amber", "violet", "north", "south", "east",
    "west", "river", "mountain", "valley", "forest", "desert", "ocean",
)  # fmt: skip


def tenant_prompts(order: list[int], tenants: int, prefix_words: int, seed: int) -> list[str]:
    """Text prompts: tenant ``t``'s seeded system text (``prefix_words`` words) + a unique 30-word user
    line, one per entry of ``order`` (tenant indices), in a seeded shuffle of ``order``.

    The real-vLLM comparison (``scripts/realvllm/vs_sglang.py``) and ``kvgate bench gateway-ttft`` send
    these, so both measure the same request shape.
    """
    rng = random.Random(seed)
    systems = [" ".join(rng.choice(TENANT_WORDS) for _ in range(prefix_words)) for _ in range(tenants)]
    order = list(order)
    rng.shuffle(order)
    return [
        systems[t] + f"\nUser {i}: " + " ".join(rng.choice(TENANT_WORDS) for _ in range(30))
        for i, t in enumerate(order)
    ]


@dataclass(slots=True)
class RequestSpec:
    """One request to send: completions (``prompt``) unless ``messages`` is set (chat)."""

    prompt_ids: list[int]
    max_tokens: int
    model: str = "sim-model"
    # Chat requests: the messages; the ids above are then the concatenated contents (for the sim).
    messages: list[dict[str, str]] | None = None
    lora: str | None = None  # adapter name; sent as the model name
    group: str = ""  # shared-prefix group, chat session or adapter, for per-group reports
    session: str | None = None
    # Fixed send offset in seconds from the start (bursty workloads); None = the load generator decides.
    at: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    _text: str | None = None

    @property
    def prompt_text(self) -> str:
        # Rendered lazily and once: long prompts are only turned into text when sent or hashed.
        if self._text is None:
            self._text = render(self.prompt_ids)
        return self._text

    @property
    def target_model(self) -> str:
        return self.lora or self.model


def shared_prefix(
    *,
    num_groups: int,
    num_prompts_per_group: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    seed: int = 0,
    model: str = "sim-model",
    shuffle: bool = True,
) -> Iterator[RequestSpec]:
    """inference-perf's ``shared_prefix``: groups share a system prompt, each prompt adds a question.

    Requests are interleaved across groups (shuffled) the way inference-perf sends them, so a
    prefix-blind router spreads every group over every replica.
    """
    rng = random.Random(seed)
    prefixes = [random_ids(rng, system_prompt_len) for _ in range(num_groups)]
    order = [(g, p) for g in range(num_groups) for p in range(num_prompts_per_group)]
    if shuffle:
        rng.shuffle(order)
    for g, _ in order:
        yield RequestSpec(
            prompt_ids=prefixes[g] + random_ids(rng, question_len),
            max_tokens=output_len,
            model=model,
            group=f"g{g}",
        )


def shared_prefix_stream(
    *,
    num_groups: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    count: int,
    seed: int = 0,
    model: str = "sim-model",
    zipf: float = 0.0,
) -> Iterator[RequestSpec]:
    """An endless-style stream of ``count`` shared-prefix requests, group drawn per request.

    ``zipf`` > 0 skews traffic towards the first groups (popular customers), 0 = uniform.
    """
    rng = random.Random(seed)
    prefixes = [random_ids(rng, system_prompt_len) for _ in range(num_groups)]
    weights = [1.0 / (g + 1) ** zipf for g in range(num_groups)]
    groups = rng.choices(range(num_groups), weights=weights, k=count)
    for g in groups:
        yield RequestSpec(
            prompt_ids=prefixes[g] + random_ids(rng, question_len),
            max_tokens=output_len,
            model=model,
            group=f"g{g}",
        )


def sharegpt_like(
    *,
    count: int,
    seed: int = 0,
    model: str = "sim-model",
    input_mu: float = 5.4,
    input_sigma: float = 1.0,
    output_mu: float = 5.0,
    output_sigma: float = 0.9,
    max_input: int = 4096,
    max_output: int = 1024,
) -> Iterator[RequestSpec]:
    """ShareGPT-like lognormal input/output lengths (medians ~220 in, ~150 out), no shared prefixes.

    The defaults approximate ShareGPT's published length distribution; clipped to [4, max].
    """
    rng = random.Random(seed)
    for i in range(count):
        n_in = min(max_input, max(4, int(rng.lognormvariate(input_mu, input_sigma))))
        n_out = min(max_output, max(4, int(rng.lognormvariate(output_mu, output_sigma))))
        yield RequestSpec(prompt_ids=random_ids(rng, n_in), max_tokens=n_out, model=model, group=f"r{i % 8}")


def multi_turn_chat(
    *,
    num_sessions: int,
    turns: int,
    system_len: int = 200,
    user_len: int = 60,
    answer_len: int = 80,
    seed: int = 0,
    model: str = "sim-model",
) -> Iterator[RequestSpec]:
    """Chat sessions whose context grows every turn (system + all earlier turns + the new question).

    The assistant's earlier answers are synthetic (the same length as ``max_tokens``), so the
    conversation is fixed in advance and the run is reproducible; turns of different sessions are
    interleaved round-robin, so a session's next turn arrives after the others have had theirs.
    """
    rng = random.Random(seed)
    system = [random_ids(rng, system_len) for _ in range(num_sessions)]
    history: list[list[dict[str, str]]] = [[{"role": "system", "content": render(s)}] for s in system]
    ids: list[list[int]] = [list(s) for s in system]
    for _ in range(turns):
        for s in range(num_sessions):
            question = random_ids(rng, user_len)
            ids[s] = ids[s] + question
            history[s].append({"role": "user", "content": render(question)})
            yield RequestSpec(
                prompt_ids=list(ids[s]),
                max_tokens=answer_len,
                model=model,
                messages=list(history[s]),
                group=f"s{s}",
                session=f"session-{s}",
            )
            answer = random_ids(rng, answer_len)
            ids[s] = ids[s] + answer
            history[s].append({"role": "assistant", "content": render(answer)})


def multi_lora(
    *,
    count: int,
    num_adapters: int = 15,
    input_len: int = 256,
    output_len: int = 128,
    seed: int = 0,
    model: str = "sim-model",
    zipf: float = 0.0,
) -> Iterator[RequestSpec]:
    """Decode-heavy traffic spread over many LoRA adapters (the reference's regression shape: 15
    adapters against servers that hold ``max_loras`` = 3 at once)."""
    rng = random.Random(seed)
    weights = [1.0 / (a + 1) ** zipf for a in range(num_adapters)]
    adapters = rng.choices(range(num_adapters), weights=weights, k=count)
    for a in adapters:
        yield RequestSpec(
            prompt_ids=random_ids(rng, input_len),
            max_tokens=output_len,
            model=model,
            lora=f"adapter-{a}",
            group=f"adapter-{a}",
        )


def rag_stream(
    *,
    count: int,
    seed: int = 0,
    model: str = "sim-model",
    system_len: int = 1024,
    corpus: int = 1000,
    doc_len: tuple[int, int] = (400, 2000),
    docs_per_request: int = 3,
    zipf: float = 1.0,
    question_len: tuple[int, int] = (30, 150),
    output_len: tuple[int, int] = (64, 256),
) -> Iterator[RequestSpec]:
    """Long-context RAG: one system prompt shared by every request, then ``docs_per_request`` distinct
    documents retrieved from a corpus of ``corpus`` whose popularity is Zipf(``zipf``) by document number
    (the first drawn, i.e. the top-ranked, placed first), then a unique question.

    Documents repeat, whole prompts never do: a prefix cache reuses the system prompt and the top document
    (the next ones only when the same pair leads again). ``group`` names the top document. A document's
    length and ids depend on ``(seed, document)`` only and are built on first use.
    """
    rng = random.Random(seed)
    system = random_ids(rng, system_len)
    cum = list(itertools.accumulate(1.0 / (d + 1) ** zipf for d in range(corpus)))
    docs: dict[int, list[int]] = {}
    for _ in range(count):
        picked: list[int] = []
        while len(picked) < docs_per_request:
            d = bisect.bisect_left(cum, rng.random() * cum[-1])
            if d not in picked:
                picked.append(d)
        ids = list(system)
        for d in picked:
            doc = docs.get(d)
            if doc is None:
                drng = random.Random(f"rag-doc:{seed}:{d}")
                doc = docs[d] = random_ids(drng, drng.randint(*doc_len))
            ids += doc
        ids += random_ids(rng, rng.randint(*question_len))
        yield RequestSpec(ids, rng.randint(*output_len), model=model, group=f"d{picked[0]}")


def bursts(
    inner: Iterator[RequestSpec],
    *,
    burst_size: int,
    period: float,
    jitter: float = 0.05,
    seed: int = 0,
) -> Iterator[RequestSpec]:
    """Turn any workload into bursts: ``burst_size`` requests land together every ``period`` s."""
    rng = random.Random(seed)
    for i, spec in enumerate(inner):
        spec.at = (i // burst_size) * period + rng.random() * jitter
        yield spec


def poisson_offsets(rng: random.Random, qps: float, count: int) -> Iterator[float]:
    """Send offsets (seconds from start) of a Poisson process at ``qps`` requests per second."""
    t = 0.0
    for _ in range(count):
        t += -math.log(1.0 - rng.random()) / qps
        yield t
