"""What a run records as it goes: its steps, the experts consulted, and live events for streaming."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from opentelemetry.context import Context

from common import tracing
from common.client import ExpertError
from common.protocol import Step
from orchestrator.events import Answered, Asking, Emit


class RunCancelled(Exception):
    """The run was cancelled (its A2A task): no further expert is asked."""


@dataclass
class RunTrace:
    emit: Emit = lambda event: None
    steps: list[Step] = field(default_factory=list)
    consulted: list[str] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: float = math.inf  # time.monotonic() by which the run ends (RUN_TIMEOUT)
    parent: Context | None = None  # the run's span: each consultation's span is its child, in whatever thread
    started: float = field(default_factory=time.perf_counter)  # the run's start, which steps' times count from
    ranking: list[dict] | None = None  # the experts ranked for the task, best first: {"expert", "score"}
    _landing: threading.Lock = field(default_factory=threading.Lock)  # consultations land from parallel threads

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise RunCancelled("the run was cancelled")

    def remaining_s(self) -> float:
        """What is left of the run's time, at least a second: every model call and expert gets only this."""
        return max(1.0, self.deadline - time.monotonic())

    def consult(self, expert, question: str, thought: str = "", chosen_by: str | None = None,
                max_new_tokens: int = 256, reason: str = "") -> Step:
        """Ask one expert, record the step (failures included, as readable observations) and stream it. The run's
        ``ranking`` rides on the first step to land: experts asked in parallel answer in any order."""
        self.check_cancelled()
        self.emit(Asking(thought, expert.name, question, reason))
        started = time.perf_counter()
        answer = None
        with tracing.tool_span(expert.name, question, self.parent) as span:
            try:
                answer = expert.client.chat(question, timeout_s=self.remaining_s(), max_new_tokens=max_new_tokens)
            except ExpertError as exc:
                observation = f"{exc} (continue with the other experts)"
                tracing.failed(span, str(exc), "expert_error")
            else:
                observation = answer.response
                tracing.record_usage(span, answer.usage.prompt_tokens, answer.usage.completion_tokens)
                if answer.timings is not None:
                    tracing.record_timings(span, answer.timings.model_dump())
        with self._landing:
            step = Step(thought=thought, expert=expert.name, input=question, observation=observation,
                        ok=answer is not None, elapsed_ms=int((time.perf_counter() - started) * 1000),
                        started_ms=int((started - self.started) * 1000),
                        chosen_by=chosen_by, ranking=None if self.steps else self.ranking, reason=reason,
                        sources=answer.sources if answer else [], language=answer.language if answer else None,
                        model=answer.model if answer else None, usage=answer.usage if answer else None,
                        timings=answer.timings if answer else None)
            self.steps.append(step)
            if expert.name not in self.consulted:
                self.consulted.append(expert.name)
        self.emit(Answered(step))
        return step

    @property
    def answered(self) -> list[str]:
        """Experts that gave an answer (consulted ones may have failed)."""
        return [s.expert for s in self.steps if s.ok and s.expert]
