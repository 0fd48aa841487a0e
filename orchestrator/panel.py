"""The panel strategy: every selected expert answers at once (Mixture-of-Agents); the composer merges their answers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from orchestrator.routing import Ranked
from orchestrator.trace import RunTrace


def run_panel(task: str, experts: list, ranking: list[Ranked], trace: RunTrace, *, top_k: int,
              expert_max_new_tokens: int) -> bool:
    """Ask the top ``top_k`` experts by ranking (all when 0) in parallel; wall time is the slowest plus the merge.

    Returns False: the panel has no step limit to hit."""
    by_name = {e.name: e for e in experts}
    chosen = [(i, r) for i, r in enumerate(ranking) if r.name in by_name][: top_k or None]
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        futures = [pool.submit(trace.consult, by_name[r.name], task, "", "panel", expert_max_new_tokens,
                               reason=f"panel: every selected expert is asked (ranked {i + 1}, relevance "
                                      f"{r.score:.2f})")
                   for i, r in chosen]
        for f in futures:
            f.result()
    return False
