"""How a run gathers the experts' answers. A strategy consults experts into the run's trace and says whether it hit
a limit; the composer then writes the final answer from them, the same way for every strategy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from common.engine.types import Engine
from common.protocol import IntegrateRequest
from common.settings import OrchestratorSettings
from orchestrator.experts import Expert
from orchestrator.panel import run_panel
from orchestrator.react import run_react
from orchestrator.routing import Ranked
from orchestrator.trace import RunTrace


class Strategy(Protocol):
    def gather(self, req: IntegrateRequest, experts: list[Expert], ranking: list[Ranked], trace: RunTrace) -> bool:
        """Consult experts (each consultation recorded in ``trace``); True when a step or time limit was hit."""
        ...


@dataclass(frozen=True)
class React:
    """The constrained ReAct loop decides whom to ask (``ROUTING``: the ranking, or the model freely)."""

    engine: Engine
    settings: OrchestratorSettings

    def gather(self, req: IntegrateRequest, experts: list[Expert], ranking: list[Ranked], trace: RunTrace) -> bool:
        s = self.settings
        max_steps = min(req.max_steps or s.max_steps, s.max_steps)  # a request may ask for fewer steps, never more
        return run_react(self.engine, req.task, experts, ranking, trace, max_steps=max_steps, routing=s.routing,
                         ratio=s.routing_ratio, expert_max_new_tokens=s.expert_max_new_tokens)


@dataclass(frozen=True)
class Panel:
    """Every selected expert at once (the top ``PANEL_TOP_K`` by ranking)."""

    settings: OrchestratorSettings

    def gather(self, req: IntegrateRequest, experts: list[Expert], ranking: list[Ranked], trace: RunTrace) -> bool:
        return run_panel(req.task, experts, ranking, trace, top_k=self.settings.panel_top_k,
                         expert_max_new_tokens=self.settings.expert_max_new_tokens)


def strategies(engine: Engine, settings: OrchestratorSettings) -> dict[str, Strategy]:
    """One of each, by the name a request gives in ``strategy``."""
    return {"react": React(engine, settings), "panel": Panel(settings)}
