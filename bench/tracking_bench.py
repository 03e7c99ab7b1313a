"""Tracking benchmark: how soon the bot knows a job has finished, and how many status calls that costs.

    python -m bench.tracking_bench            # full run: 200 jobs per mode, real time, both scenarios (~12 min)
    python -m bench.tracking_bench --quick    # smoke run: 40 jobs, time compressed 10x (~1 min)
    python -m bench tracking                  # the same full run through the bench runner

Per scenario: phase 1 runs the real bot three ways side by side (one process, one event loop, each mode
with its own App, SQLite file and FakeFal): webhook (fal's signed callbacks to the bot's web server),
adaptive polling (PollPlanner, after warm-up jobs) and a fixed 5 s poll (same bot, fixed planner). Phase 2
runs fal_client's default subscribe loop (0.1 s polling) alone, since it alone sends ~2000 requests/s.
See bench/README.md, section "Tracking", for the method and the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.tracking_modes import SCENARIOS, ModeResult, run_bot_mode, run_fal_client_mode

WEBHOOK_P95_TARGET = 0.3
ADAPTIVE_MEAN_TARGET = 1.0


def machine() -> str:
    cpu = "unknown CPU"
    mem = "unknown memory"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU ({cpu}), {mem}, Python {platform.python_version()}, {platform.system()}"


async def run_scenario(name: str, *, jobs: int, warmup: int, seed: int, scale: float) -> list[ModeResult]:
    scenario = SCENARIOS[name]
    go = asyncio.Event()
    print(f"[{name}] {scenario.describe}; {jobs} jobs per mode, time x{scale:g}", file=sys.stderr, flush=True)
    webhook, adaptive, fixed = await asyncio.gather(
        run_bot_mode("webhook", scenario, jobs=jobs, seed=seed, scale=scale, go=go),
        run_bot_mode("adaptive", scenario, jobs=jobs, seed=seed, scale=scale, warmup=warmup, go=go),
        run_bot_mode("fixed", scenario, jobs=jobs, seed=seed, scale=scale, go=go),
    )
    print(f"[{name}] bot modes done; running the fal_client loop", file=sys.stderr, flush=True)
    fal_client = await run_fal_client_mode(scenario, jobs=jobs, seed=seed, scale=scale)
    fixed.mode = f"fixed {5 * scale:g} s poll"
    adaptive.mode = "adaptive polling"
    return [webhook, adaptive, fixed, fal_client]


def table(results: list[ModeResult], scale: float) -> str:
    unit = "s" if scale == 1 else "s (compressed)"
    lines = [
        f"| scenario | mode | jobs | mean delay {unit} | p50 | p95 | max | status req/job | to delivered, mean "
        "| loop lag p95 | note |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for result in results:
        r: dict[str, Any] = result.row()
        held = f"{r['held_mean']:.3f}" if r["held_mean"] is not None else "n/a"
        note = r["note"] + (f"; {r['failures']} NOT DELIVERED" if r["failures"] else "")
        lines.append(
            f"| {r['scenario']} | {r['mode']} | {r['jobs']} | {r['mean']:.3f} | {r['p50']:.3f} | {r['p95']:.3f} "
            f"| {r['max']:.3f} | {r['status_per_job']:.1f} | {held} | {r['lag_p95'] * 1000:.1f} ms | {note} |"
        )
    return "\n".join(lines)


def verdicts(results: list[ModeResult], scale: float) -> list[str]:
    out = []
    by = {(r.scenario, r.mode.split()[0]): r.row() for r in results}
    for scenario in sorted({r.scenario for r in results}):
        webhook, adaptive, fixed = by[(scenario, "webhook")], by[(scenario, "adaptive")], by[(scenario, "fixed")]
        p95_ok = webhook["p95"] < WEBHOOK_P95_TARGET  # network latency is not compressed with time
        mean_ok = adaptive["mean"] < ADAPTIVE_MEAN_TARGET * scale
        calls_ok = adaptive["status_per_job"] <= fixed["status_per_job"]
        out.append(
            f"{scenario}: webhook p95 {webhook['p95']:.3f} s < {WEBHOOK_P95_TARGET} s: "
            f"{'met' if p95_ok else 'MISSED'}; "
            f"adaptive mean {adaptive['mean']:.3f} s < {ADAPTIVE_MEAN_TARGET * scale:g} s: "
            f"{'met' if mean_ok else 'MISSED'}; adaptive {adaptive['status_per_job']:.1f} status req/job <= fixed "
            f"{fixed['status_per_job']:.1f}: {'met' if calls_ok else 'MISSED'}"
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracking_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 jobs, time compressed 10x, for a smoke run")
    parser.add_argument("--jobs", type=int, help="jobs per mode (default 200; 40 with --quick)")
    parser.add_argument("--warmup", type=int, help="warm-up jobs for adaptive polling (default 20; 10 with --quick)")
    parser.add_argument("--scale", type=float, help="time multiplier for job times and every poll gap (default 1)")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "both"], default="both")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(list(argv) if argv is not None else None)
    jobs = args.jobs or (40 if args.quick else 200)
    warmup = args.warmup if args.warmup is not None else (10 if args.quick else 20)
    scale = args.scale or (0.1 if args.quick else 1.0)
    names = list(SCENARIOS) if args.scenario == "both" else [args.scenario]
    logging.basicConfig(level=logging.ERROR)  # the bot's own logs would drown the table

    started = datetime.datetime.now(datetime.UTC)
    results: list[ModeResult] = []
    for name in names:
        results += asyncio.run(run_scenario(name, jobs=jobs, warmup=warmup, seed=args.seed, scale=scale))
    took = datetime.datetime.now(datetime.UTC) - started

    command = "python -m bench.tracking_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Machine: {machine()}")
    print(f"Date: {started:%Y-%m-%d %H:%M} UTC; took {took.total_seconds() / 60:.1f} min")
    print(f"Command: {command.strip()}; seed {args.seed}; {jobs} jobs per mode; {warmup} warm-up jobs")
    for name in names:
        print(f"Scenario {name}: {SCENARIOS[name].describe}" + (f" (times x{scale:g})" if scale != 1 else ""))
    print()
    print(table(results, scale))
    print()
    for line in verdicts(results, scale):
        print(line)
    failures = sum(r.failures for r in results)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
