"""Capacity with replicas: the same wave of concurrent /integrate runs through haproxy against one replica of the
legal expert and against two, each deployment on its own Postgres with its own orchestrator, waves interleaved
(one, two, one, two) so both see the same machine. On one host the replicas share its cores (the one replica gets
them all as threads, the two one each): the figure says what a second process costs or gains here, and each run's
tokens give the arithmetic for N replicas on a model server (README, "Scale out"). ``python -m bench.scale``."""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.load import CORES, p95
from harness.scale import Stack

WAVE = 16
ROUNDS = 2
TASK = "What does the GDPR require when a personal data breach happens? (case {})"


def _wave(url: str, offset: int) -> dict:
    def one(i: int) -> tuple[float, dict]:
        started = time.perf_counter()
        resp = requests.post(f"{url}/integrate", json={"task": TASK.format(offset + i), "strategy": "react"},
                             timeout=1800)
        resp.raise_for_status()
        return time.perf_counter() - started, resp.json()

    started = time.perf_counter()
    with ThreadPoolExecutor(WAVE) as pool:
        results = list(pool.map(one, range(WAVE)))
    wall = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    usage = [r[1]["usage"] for r in results]
    return {"wall_s": round(wall, 2), "runs_per_min": round(60 * WAVE / wall, 2),
            "p50_s": round(statistics.median(latencies), 2),
            "p95_s": round(p95(latencies), 2),
            "answered": sum(1 for r in results if r[1]["response"].strip()),
            "consultations_per_run": round(statistics.mean(
                sum(e["calls"] for e in u["experts"].values()) for u in usage), 2),
            **{f"{part}_{kind}_tokens_per_run": round(statistics.mean(
                sum(e[f"{kind}_tokens"] for e in (u["experts"].values() if part == "expert" else [u["orchestrator"]]))
                for u in usage)) for part in ("expert", "orchestrator") for kind in ("input", "output")}}


def scale(work: Path) -> dict:
    stacks = {"1": Stack(work / "one", experts=1, orchestrators=1, expert_env={"THREADS": str(CORES)}),
              "2": Stack(work / "two", experts=2, orchestrators=1)}
    waves: dict[str, list[dict]] = {"1": [], "2": []}
    try:
        for stack in stacks.values():
            stack.start()
        for stack in stacks.values():  # warm-up: models, embedders, the first plan compiled
            requests.post(f"{stack.orchestrator_lb}/integrate", json={"task": TASK.format("warm")}, timeout=1800)
        for r in range(ROUNDS):
            for name in ("1", "2") if r % 2 == 0 else ("2", "1"):
                waves[name].append(_wave(stacks[name].orchestrator_lb, 100 * r))
    finally:
        for stack in stacks.values():
            stack.stop()
    best = {n: max(w, key=lambda x: x["runs_per_min"]) for n, w in waves.items()}
    return {"wave": WAVE, "rounds": ROUNDS, "cores": CORES, "waves": waves, "best": best,
            "two_over_one_throughput": round(best["2"]["runs_per_min"] / best["1"]["runs_per_min"], 3)}


def report(s: dict) -> None:
    print(f"\n== Scale: {s['wave']} concurrent /integrate through haproxy, 1 vs 2 replicas of the legal expert on "
          f"{s['cores']} cores, Postgres, interleaved ({s['rounds']} rounds, best wave) ==")
    for name, w in s["best"].items():
        print(f"{name} replica(s): {w['runs_per_min']:.1f} runs/min | p50 {w['p50_s']:.1f} s | p95 {w['p95_s']:.1f} s "
              f"| answered {w['answered']}/{s['wave']} | per run: {w['consultations_per_run']} consultations, "
              f"expert tokens in/out {w['expert_input_tokens_per_run']}/{w['expert_output_tokens_per_run']}, "
              f"orchestrator's {w['orchestrator_input_tokens_per_run']}/{w['orchestrator_output_tokens_per_run']}")
    print(f"two replicas / one, throughput: {s['two_over_one_throughput']:.2f}x (same cores: the second replica "
          "adds a process, not compute)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report(scale(Path(tmp)))


if __name__ == "__main__":
    main()
