"""rev-a35 F1 (fixreva35; the review's script, kept): per-pick CPU of the cost scorer with committedKv
on vs off, by the number of this picker's in-flight requests (8 endpoints, each with a known cache so
``_overflow`` runs). CPU time (thread_time), median of the timed picks; each timed pick is finished at
once so the in-flight count stays N."""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.scheduling.types import InferenceRequest
from scheduling.helpers import fleet

HEAD = "".join(f"Tenant {{t}} instructions, rule {i}. " for i in range(40))


def director(on: bool, blocks: int):
    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "kvgate-cost-scorer":
            params = dict(spec.parameters or {})
            if on:
                params["committedKv"] = True
            spec.parameters = params
    store = fleet(8)
    for e in store.all():
        e.metrics.kv_cache_usage = 0.5
        e.metrics.num_gpu_blocks, e.metrics.block_size = blocks, 16
    now = [0.0]
    return build_director(cfg, store, clock=lambda: now[0], seed=0), now


def run(on: bool, inflight: int, blocks: int, timed: int = 300) -> float:
    d, now = director(on, blocks)
    for i in range(inflight):
        r = InferenceRequest(f"f{i}", "m", prompt_text=HEAD.format(t=i % 16) + f"q{i}", max_tokens=400)
        ep = d.pick(r).primary
        d.on_dispatched(r, ep)
        d.on_first_token(r, ep)
        now[0] += 0.001
    cpu = []
    for j in range(timed):
        r = InferenceRequest(f"t{j}", "m", prompt_text=HEAD.format(t=j % 16) + f"x{j}", max_tokens=400)
        t0 = time.thread_time()
        ep = d.pick(r).primary
        cpu.append(time.thread_time() - t0)
        d.on_dispatched(r, ep)
        d.on_finished(r, ep, None, True)
        now[0] += 0.001
    return statistics.median(cpu) * 1e6


if __name__ == "__main__":
    import gc
    if "--serve-gc" in sys.argv:  # kvgate serve's tune_gc thresholds
        gc.set_threshold(20_000, 20, 20)
    for blocks in (1_000_000, 100):  # a roomy cache (one peak per candidate) / a full one (two peaks)
        for n in (0, 256, 1024, 4096):
            off = run(False, n, blocks)
            on = run(True, n, blocks)
            print(f"blocks={blocks:>8} inflight={n:>5}: off {off:8.1f} us  on {on:8.1f} us  "
                  f"ratio {on / off:5.2f}x", flush=True)
