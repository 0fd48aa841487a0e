"""The panel strategy: every selected expert answers at once, then the LLM merges the answers (Mixture-of-Agents)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from orchestrator.react import Outcome, synthesized
from orchestrator.routing import Ranked
from orchestrator.trace import RunTrace


def run_panel(engine, task: str, experts: list, ranking: list[Ranked], trace: RunTrace, *, top_k: int,
              timeout_s: float, expert_max_new_tokens: int) -> Outcome:
    """Ask the top ``top_k`` experts by ranking (all when 0) in parallel; wall time is the slowest plus the merge."""
    by_name = {e.name: e for e in experts}
    chosen = [by_name[r.name] for r in ranking if r.name in by_name][: top_k or None]
    ranking_record = [{"expert": r.name, "score": round(r.score, 4)} for r in ranking]
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        futures = [pool.submit(trace.consult, e, task, "", "ranking" if top_k else None,
                               ranking_record if i == 0 else None, expert_max_new_tokens)
                   for i, e in enumerate(chosen)]
        for f in futures:
            f.result()
    return synthesized(engine, task, trace, timeout_s, fallback=False)
