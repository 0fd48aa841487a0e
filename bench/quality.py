"""Answer quality of ``/integrate`` on the dev set (bench/quality_tasks.yaml), both strategies, embedded model.

Per strategy and per language of the task (English, Chinese): degenerate final answers (common.text's loop detector),
grounded share (sentences of the final answer whose best cosine to any expert-answer sentence is at least 0.6 on
MiniLM's scale), merge gain (the final answer's cosine to the task minus the best expert answer's), how on-topic the
final answer is (that cosine itself, so answers that got shorter or faster show whether they lost substance) and its
median length, off-topic consultations on single-domain tasks, the share of single-domain tasks whose right expert
answered from at least one passage of its knowledge base and, of those, the share whose final answer still cites a
source (a merge must not lose the experts' citations), the share of each composition path, and p50/p95 latency.
Answers are scored with the multilingual embedder the composer uses (common/embedding.py), so Chinese tasks are read,
not guessed at. The strategies run interleaved, task by task, one request at a time.

``python -m bench.quality [N]`` runs N tasks spread over the set and prints each answer and the table (``make bench``
runs them all); ``--against REVISION`` runs a git revision's code beside this checkout's, interleaved, for a
before/after comparison on one machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import requests
import yaml

from bench.load import p95
from common import language
from common.embedding import choose_embedder
from common.text import is_degenerate, sentences
from harness.services import ROOT, expert, orchestrator_service

HERE = Path(__file__).parent
STRATEGIES = ("react", "panel")
GROUNDED = 0.6


def score(embed, task: str, body: dict, expected: list[str]) -> dict:
    """The measures of one answer against its task and the answers its experts gave."""
    answers = [s["observation"] for s in body["steps"] if s["ok"] and s["expert"]]
    final = body["response"]
    parts = sentences(final) or [final]
    expert_parts = [p for a in answers for p in sentences(a)] or answers or [""]
    vectors = embed([task, final, *answers, *parts, *expert_parts])
    query, final_v = vectors[0], vectors[1]
    answer_v = vectors[2: 2 + len(answers)]
    part_v = vectors[2 + len(answers): 2 + len(answers) + len(parts)]
    expert_part_v = vectors[2 + len(answers) + len(parts):]
    best = float(embed.score((answer_v @ query).max())) if answers else 0.0
    grounded = [float(embed.score((expert_part_v @ v).max())) >= GROUNDED for v in part_v]
    consulted = body["experts"]
    right = [s for s in body["steps"] if s["ok"] and s["expert"] in expected]
    return {
        "language": language.detect(task),
        "right_expert_sourced": len(expected) == 1 and any(s["sources"] for s in right),
        "answer_cites": any(c["cited"] for c in body["sources"]),
        "degenerate": is_degenerate(final),
        "grounded_share": round(sum(grounded) / len(grounded), 3),
        "on_topic": round(float(embed.score(final_v @ query)), 3),
        "merge_gain": round(float(embed.score(final_v @ query)) - best, 3),
        "chars": len(final),
        "off_topic": len(expected) == 1 and any(e not in expected for e in consulted),
        "missed": [e for e in expected if e not in consulted],
        "experts_looped": sum(is_degenerate(a) for a in answers),
        "merge": body["merge"],
    }


def timings(body: dict) -> dict:
    """Where one run's time went, from its own JSON: before the first consultation (routing, the first ReAct step),
    the consultations (wall time from the first start to the last end, and the sum of their times: more than the wall
    when they ran in parallel) and, inside them as each expert measured it, retrieval, the wait for the engine, the
    time to the first text, decoding and grounding its sentences in its passages; the orchestrator's own model (ReAct
    steps and the merge), the composition."""
    steps = [s for s in body["steps"] if s["expert"]]
    first = min((s["started_ms"] for s in steps), default=0)
    last = max((s["started_ms"] + s["elapsed_ms"] for s in steps), default=0)
    inside = [s["timings"] for s in steps if s.get("timings")]
    return {"total_ms": body["elapsed_ms"], "before_first_ms": first, "consult_wall_ms": last - first,
            "consult_sum_ms": sum(s["elapsed_ms"] for s in steps), "consultations": len(steps),
            **{f"expert_{part}_ms": sum(t[f"{part}_ms"] or 0 for t in inside)
               for part in ("retrieval", "queue", "first_token", "decode", "grounding")},
            "own_model_ms": body["usage"]["orchestrator"]["elapsed_ms"],
            "own_model_calls": body["usage"]["orchestrator"]["calls"], "compose_ms": body["synthesis_ms"],
            "expert_output_tokens": sum(e["output_tokens"] for e in body["usage"]["experts"].values())}


def breakdown(rows: list[dict], labels: Sequence[str] = STRATEGIES) -> dict:
    """Per strategy (``labels``: with the revision run beside it), the median of each part of :func:`timings`."""
    return {label: {part: round(statistics.median(r["timings"][part] for r in mine), 1)
                    for part in mine[0]["timings"]}
            for label in labels if (mine := [r for r in rows if r["strategy"] == label])}


def _stack(work: Path, root: Path) -> list:
    """Two experts and an orchestrator running the code of the checkout at ``root``, on the product's own defaults
    (what a user of `make run` gets)."""
    ai = expert("ai_expert", work / "ai", root=root).start()
    law = expert("law_expert", work / "law", root=root).start()
    orch = orchestrator_service(work / "orch", [ai.url, law.url], env={"EXPERT_MAX_NEW_TOKENS": None},
                                root=root).start()
    return [orch, ai, law]


def _worktree(work: Path, revision: str) -> Path:
    """A detached checkout of ``revision`` (its services run from there; it shares this checkout's model cache)."""
    path = work / f"rev-{revision}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), revision], check=True,
                   capture_output=True)
    return path


def quality(work: Path, limit: int | None = None, against: str | None = None) -> dict:
    """Every task through both strategies. With ``against`` (a git revision), the same tasks also run on that
    revision's code, interleaved task by task (before, after; then after, before), so the two are compared on one
    machine in one run."""
    tasks = yaml.safe_load((HERE / "quality_tasks.yaml").read_text())
    if limit:  # evenly spread over the set, so a quick run still sees every kind of task
        tasks = tasks[:: max(1, len(tasks) // limit)][:limit]
    roots = {"": ROOT}
    if against:
        roots = {against: _worktree(work, against), "now": ROOT}
    stacks: dict[str, list] = {}
    embed = choose_embedder("auto")
    rows: list[dict] = []
    try:
        for variant, root in roots.items():
            stacks[variant] = _stack(work / (variant or "now"), root)
        for n, item in enumerate(tasks):
            order = list(roots) if n % 2 == 0 else list(reversed(roots))
            for strategy in STRATEGIES:
                for variant in order:
                    started = time.perf_counter()
                    resp = requests.post(f"{stacks[variant][0].url}/integrate",
                                         json={"task": item["task"], "strategy": strategy}, timeout=1800)
                    resp.raise_for_status()
                    body = resp.json()
                    rows.append({"task": item["task"], "strategy": f"{strategy} {variant}".strip(),
                                 "expected": item["experts"], "latency_s": round(time.perf_counter() - started, 2),
                                 "experts": body["experts"], "response": body["response"],
                                 "why": body["checks"]["why"], "relevance": body["checks"]["expert_relevance"],
                                 "timings": timings(body), **score(embed, item["task"], body, item["experts"])})
    finally:
        for services in stacks.values():
            for service in services:
                service.stop()
        if against:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(roots[against])],
                           capture_output=True)
    labels = [f"{s} {v}".strip() for s in STRATEGIES for v in roots]
    return {"tasks": len(tasks), "summary": summarize(rows, labels), "breakdown": breakdown(rows, labels),
            "rows": rows}


def summarize(rows: list[dict], labels: Sequence[str] = STRATEGIES) -> dict:
    """Per strategy (``labels``: with the revision run beside it), and per strategy and language ("react/zh")."""
    out = {}
    groups = [(s, None) for s in labels] + [(s, lang) for s in labels for lang in ("en", "zh")]
    for strategy, lang in groups:
        mine = [r for r in rows if r["strategy"] == strategy and lang in (None, r["language"])]
        if not mine:
            continue
        single = [r for r in mine if len(r["expected"]) == 1]
        multi = [r for r in mine if len(r["expected"]) > 1]
        sourced = [r for r in single if r["right_expert_sourced"]]
        latencies = sorted(r["latency_s"] for r in mine)
        out[strategy if lang is None else f"{strategy}/{lang}"] = {
            "tasks": len(mine),
            "degenerate": sum(r["degenerate"] for r in mine),
            "grounded_share_mean": round(statistics.mean(r["grounded_share"] for r in mine), 3),
            "merge_gain_ok_share": round(sum(r["merge_gain"] >= -0.05 for r in mine) / len(mine), 3),
            "merge_gain_mean": round(statistics.mean(r["merge_gain"] for r in mine), 3),
            "on_topic_mean": round(statistics.mean(r["on_topic"] for r in mine), 3),
            "chars_p50": int(statistics.median(r["chars"] for r in mine)),
            "off_topic_share": round(sum(r["off_topic"] for r in single) / max(len(single), 1), 3),
            "right_expert_sourced": round(sum(r["right_expert_sourced"] for r in single) / max(len(single), 1), 3),
            "sourced_answer_cites": round(sum(r["answer_cites"] for r in sourced) / max(len(sourced), 1), 3),
            "multi_all_consulted": f"{sum(not r['missed'] for r in multi)}/{len(multi)}",
            "paths": {p: sum(r["merge"] == p for r in mine) for p in ("generated", "extractive", "none")},
            "multi_generated": f"{sum(r['merge'] == 'generated' for r in multi)}/{len(multi)}",
            "experts_looped": sum(r["experts_looped"] for r in mine),
            "p50_s": round(statistics.median(latencies), 2),
            "p95_s": p95(latencies),
        }
    return out


def report(q: dict) -> None:
    print(f"\n== Answer quality on {q['tasks']} dev tasks (bench/quality_tasks.yaml), embedded model ==")
    print("targets, in each language: 0 degenerate | merge gain >= -0.05 on >= 90% | grounded share >= 0.8 | react "
          "off-topic <= 10% | Chinese single-domain: the right expert answers from a passage on >= 80% | an answer "
          "from passages cites one")
    cols = ("tasks", "degenerate", "grounded_share_mean", "merge_gain_ok_share", "merge_gain_mean", "on_topic_mean",
            "chars_p50", "off_topic_share",
            "right_expert_sourced", "sourced_answer_cites", "multi_all_consulted", "multi_generated", "experts_looped",
            "p50_s", "p95_s")
    print(f"{'strategy':>14} | " + " | ".join(cols) + " | paths")
    for strategy, s in q["summary"].items():
        print(f"{strategy:>14} | " + " | ".join(str(s[c]) for c in cols) + f" | {s['paths']}")
    print("\n== Where /integrate's time goes on those tasks (medians, ms; from each run's own steps and usage; the "
          "expert_ parts summed over the run's consultations, as each expert measured them) ==")
    parts = ("total_ms", "before_first_ms", "consult_wall_ms", "consult_sum_ms", "consultations",
             "expert_retrieval_ms", "expert_queue_ms", "expert_first_token_ms", "expert_decode_ms",
             "expert_grounding_ms", "own_model_ms",
             "own_model_calls", "compose_ms", "expert_output_tokens")
    print(f"{'strategy':>14} | " + " | ".join(parts))
    for strategy, b in q["breakdown"].items():
        print(f"{strategy:>14} | " + " | ".join(str(b[p]) for p in parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("limit", nargs="?", type=int, help="N tasks spread over the set (default: all)")
    parser.add_argument("--against", metavar="REVISION", help="also run a git revision's code, interleaved")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        q = quality(Path(tmp), args.limit, args.against)
    for r in q["rows"]:
        print(f"--- [{r['strategy']}] {r['task']} -> {r['experts']} {r['merge']} gain {r['merge_gain']} grounded "
              f"{r['grounded_share']} {r['latency_s']}s {r['relevance']} {r['why']}\n{r['response'][:400]}")
    report(q)


if __name__ == "__main__":
    main()
