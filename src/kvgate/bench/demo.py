"""`kvgate demo`: a small simulated fleet behind kvgate and behind round robin, side by side.

For each policy in turn it starts a fresh simulated fleet (4 Qwen3-32B-on-H100 replicas, the
simulator's HTTP servers in one subprocess) and a ``kvgate serve --policy <p>`` in front of it;
sends the same seeded shared-prefix workload (16 customers with long system prompts, Poisson
arrivals) through each; and prints TTFT p50/p90, throughput and the replicas' own prefix-cache
hit rate. Each replica's KV cache holds only a quarter of all system prompts, so the fleet keeps
every prompt cached only if each customer sticks to one replica: what prefix-aware routing buys.

``--keep`` leaves a fleet and the kvgate gateway running afterwards and prints how to send requests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from kvgate.bench import live, report
from kvgate.entry import ArgumentParser

POLICIES = [("round robin", "round-robin"), ("kvgate", "kvgate")]


@dataclass(slots=True)
class DemoSetup:
    fleet: live.FleetSpec
    load: live.LiveLoad


def default_setup(quick: bool, seed: int = 0) -> DemoSetup:
    # Qwen3-32B on H100 keeps ~25k tokens of KV per replica: 4 of the 16 system prompts (3k tokens
    # each) plus running requests. Round robin makes every replica hold all 16 (49k), so it keeps
    # recomputing ~3k-token prefills (~0.35 s each) and runs near its capacity at 12 req/s.
    fleet = live.FleetSpec(replicas=4, profile="qwen3-32b-h100", time_scale=1.0)
    load = live.LiveLoad(
        qps=12.0,
        warmup=3.0 if quick else 6.0,
        duration=5.0 if quick else 24.0,
        num_groups=16,
        system_prompt_len=3072,
        question_len=96,
        output_len=32,
        seed=seed,
    )
    return DemoSetup(fleet, load)


def results_table(rows: list[tuple[str, dict[str, Any]]]) -> Table:
    t = Table(title="Same fleet, same requests (simulated seconds)")
    for col in ("router", "TTFT p50", "TTFT p90", "output tok/s", "prefix-cache hit rate", "errors"):
        t.add_column(col, justify="right" if col != "router" else "left")
    for name, r in rows:
        t.add_row(
            name,
            _ms(r.get("ttft_p50")),
            _ms(r.get("ttft_p90")),
            f"{r['output_tok_per_s'] / 1:,.0f}",
            "-" if r.get("prefix_hit_rate") is None else f"{100 * r['prefix_hit_rate']:.0f}%",
            str(r["errors"]),
        )
    return t


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:,.0f} ms" if v < 10 else f"{v:,.1f} s"


async def demo(args: argparse.Namespace, console: Console) -> int:
    setup = default_setup(args.quick, args.seed)
    ld = setup.load
    console.print(
        f"[bold]kvgate demo[/bold]: {setup.fleet.replicas} simulated {setup.fleet.profile} replicas, "
        f"{ld.num_groups} customers x {ld.system_prompt_len}-token system prompts + "
        f"{ld.question_len}-token questions, {ld.qps:g} req/s (Poisson), {ld.warmup:g} s warm-up + "
        f"{ld.duration:g} s measured per router."
    )
    rows: list[tuple[str, dict[str, Any]]] = []
    expected = int(ld.qps * (ld.warmup + ld.duration))
    t0 = time.perf_counter()
    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as prog:
        # Every bar shown from the start, each clock started when its router's run begins (kvgate's read
        # both runs' time, 1:05 for a 33 s run: qa36c F11).
        tasks = {name: prog.add_task(name, total=expected, start=False) for name, _ in POLICIES}
        for name, policy in POLICIES:
            task = tasks[name]
            prog.start_task(task)

            def advance(_r: object, task: TaskID = task) -> None:
                prog.advance(task)

            row = await live.run_target(live.Target(name, "kvgate", policy), setup.fleet, ld, advance)
            prog.update(task, completed=expected)
            rows.append((name, row))
    console.print(results_table(rows))
    if args.json:
        report.write_json(Path(args.json), {"setup": asdict(setup), "rows": dict(rows)})
    rr, kv = rows[0][1], rows[1][1]
    if rr.get("ttft_p90") and kv.get("ttft_p90"):
        console.print(
            f"kvgate: p90 TTFT {rr['ttft_p90'] / kv['ttft_p90']:.1f}x lower than round robin "
            f"({time.perf_counter() - t0:.0f} s wall)."
        )
    if args.keep:
        return await keep_running(setup, console)
    console.print("Run [bold]kvgate demo --keep[/bold] to leave a fleet and the gateway running to try it.")
    return 0


def try_commands(base: str) -> list[str]:
    """What ``--keep`` offers to paste: a curl and the OpenAI SDK, each one line."""
    return [
        f"curl -s {base}/v1/completions -H 'content-type: application/json' "
        f'-d \'{{"model": "{live.MODEL}", "prompt": "hello there", "max_tokens": 16}}\'',
        f'python -c \'from openai import OpenAI; c = OpenAI(base_url="{base}/v1", api_key="x"); '
        f'print(c.chat.completions.create(model="{live.MODEL}", '
        f'messages=[{{"role": "user", "content": "hi"}}]).choices[0].message.content)\'',
    ]


async def keep_running(setup: DemoSetup, console: Console) -> int:
    sim, urls = await live.start_sim(setup.fleet)
    gw, base = await live.start_kvgate("kvgate", urls)
    console.print(
        f"\nkvgate is listening on [bold]{base}[/bold] in front of {len(urls)} simulated replicas "
        f"({', '.join(urls)}), model [bold]{live.MODEL}[/bold]. Try:\n"
    )
    for command in try_commands(base):
        # Never wrapped (rich wraps at 80 columns when piped): a command broken inside its quotes
        # failed when pasted ("malformed header line", qa36c F11).
        console.print(f"  {command}\n", soft_wrap=True, markup=False, highlight=False)
    console.print("Ctrl-C stops everything.")
    try:
        # Until Ctrl-C (asyncio.run cancels us) or either process exits.
        await asyncio.wait(
            [asyncio.create_task(gw.proc.wait()), asyncio.create_task(sim.proc.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
    except asyncio.CancelledError:
        pass
    finally:
        await gw.stop()
        await sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="kvgate demo", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--quick", action="store_true", help="a shorter run (for tests)")
    p.add_argument("--keep", action="store_true", help="leave a fleet and the gateway running afterwards")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    console = Console()
    try:
        return asyncio.run(demo(args, console))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as e:
        console.print(f"[red]demo failed:[/red] {e}")
        return 1


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # the fleet and the gateway end with the demo: SIGTERM, SIGHUP, Ctrl-C, any exit
    sys.exit(main())
