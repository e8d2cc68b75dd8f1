"""The contract between the simulator's engine model and whatever drives it.

Two drivers run the same ``Engine`` (``kvgate.sim.engine``):
- the real-time HTTP front (``kvgate.sim.server``): steps the engine, sleeps ``duration / time_scale``,
  then delivers the step's tokens to waiting HTTP streams;
- the virtual-clock driver (``kvgate.sim.vclock``): schedules the step's completion as an event at
  ``now + duration`` on a discrete-event clock, with no sockets.

The engine itself never sleeps and never reads a clock: ``step(now)`` decides the batch at ``now`` and
returns how long that step takes; its tokens exist at ``now + duration``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class SimRequest:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    lora: str | None = None  # adapter name; None = base model
    arrival_time: float = 0.0
    # vLLM's request ``priority`` (lower = earlier); used only by an engine with scheduling_policy priority
    priority: int = 0
    # Filled in by the engine:
    output_token_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (first schedule)
    first_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: str | None = None  # "length" | "abort"
    first_scheduled_time: float | None = None  # step start of its first schedule: queue time = this - arrival
    num_preemptions: int = 0  # times the engine preempted it (recompute)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


@dataclass(slots=True)
class StepResult:
    """One engine step: its duration and what it produced (valid at ``now + duration``)."""

    duration: float  # seconds of simulated GPU time (incl. per-step overhead, LoRA loads)
    # (request, token id) for every token this step emitted, in order.
    tokens: list[tuple[SimRequest, int]] = field(default_factory=list)
    finished: list[SimRequest] = field(default_factory=list)
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    # Requests scheduled for the first time in this step (their ``first_scheduled_time`` is the step start):
    # where the metrics front observes queue time.
    started: list[SimRequest] = field(default_factory=list)
    num_preempted: int = 0  # requests preempted in this step


@dataclass(slots=True)
class EngineStats:
    """A snapshot for ``/metrics`` (and for the fleet simulator's scrape)."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float  # used blocks / total blocks, 0..1
    block_size: int
    num_gpu_blocks: int
    max_loras: int
    running_loras: list[str]
    waiting_loras: list[str]
    prefix_cache_queries: int  # tokens (counter)
    prefix_cache_hits: int  # tokens (counter)
    num_preemptions: int  # counter
    prompt_tokens_total: int  # counter
    generation_tokens_total: int  # counter
    requests_finished: int  # counter
