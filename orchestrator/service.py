"""The orchestrator's serving layer: a task in, strategies run, a stored run out. No Flask in here."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from common import tracing
from common.a2a import Progress
from common.embedding import SentenceEmbedder
from common.errors import BadRequest, Busy, ConclaveError, NotFound, StorageFull, Unavailable
from common.metrics import Metrics
from common.protocol import (
    AgentSkill,
    AnswerLanguage,
    IntegrateRequest,
    IntegrateResponse,
    RunRecord,
    RunUsage,
    Step,
    UsageFigures,
)
from common.settings import OrchestratorSettings
from orchestrator.composer import Composer, cite
from orchestrator.events import Answered, Asking, Emit, Failed, Finished, RunEvent, Started
from orchestrator.experts import ExpertRegistry
from orchestrator.routing import Router
from orchestrator.runs import RunStore
from orchestrator.strategies import strategies
from orchestrator.trace import RunTrace

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(self, settings: OrchestratorSettings, engine, registry: ExpertRegistry,
                 router_factory: Callable[[], Router], runs: RunStore, judge_factory: Callable[[], SentenceEmbedder],
                 metrics: Metrics):
        self.settings, self.registry, self.runs, self.metrics = settings, registry, runs, metrics
        # the run's own model calls are counted (and traced, when tracing is on) as they end
        self.engine = tracing.Observed(engine)
        self.router: Router | None = None  # set once the router and the composer's judge have both loaded
        self.composer: Composer | None = None  # set when its judge (an embedder) has loaded
        self.strategies = strategies(self.engine, settings)
        self.router_error: str | None = None
        self._run_slots = threading.BoundedSemaphore(settings.max_runs)
        self.closing = False
        self._streams: set[Callable[[], None]] = set()  # ends each open stream (shutdown)
        threading.Thread(target=self._load_router, args=(router_factory, judge_factory), daemon=True,
                         name="router-load").start()

    def _load_router(self, factory: Callable[[], Router], judge_factory: Callable[[], SentenceEmbedder]) -> None:
        try:
            self.composer = Composer(self.engine, judge_factory())
            self.router = factory()
        except Exception as exc:  # reported by /ready
            log.exception("router failed to load")
            self.router_error = f"{type(exc).__name__}: {exc}"

    def readiness(self) -> dict:
        """The readiness body, or Unavailable (503) naming what is missing: the LLM (or the router), or every
        expert."""
        statuses = self.registry.statuses()
        missing = [s.url for s in statuses if not s.ready]
        brain_ready = self.engine.ready and self.router is not None
        detail = {
            "llm": self.engine.status if self.router is not None else (self.router_error or "router is loading"),
            "experts_ready": [s.name for s in statuses if s.ready],
            "experts_missing": missing,
        }
        if not brain_ready or len(missing) == len(statuses):
            raise Unavailable(f"not ready: llm {detail['llm']}; experts missing: {', '.join(missing) or 'none'}",
                              "not_ready", retry_after=5, extra=detail)
        return {"status": "ready", **detail, **self.engine.runtime}

    def shutdown(self) -> None:
        """The service is stopping (SIGTERM): take no new run, and end every streamed one now with an error event
        saying so. Each run is cancelled too (no further expert is asked); one that cannot record its failure before
        the process ends is marked failed at the next start."""
        self.closing = True
        for end in list(self._streams):
            end()

    def _prepare(self, req: IntegrateRequest):
        if self.closing:
            raise Unavailable("the orchestrator is shutting down", "shutting_down", retry_after=5)
        if not self.engine.ready or self.router is None:
            raise Unavailable(f"orchestrator not ready: {self.engine.status}", "not_ready", retry_after=5)
        known = self.registry.known()
        if not known:
            raise Unavailable(f"no expert reachable (tried: {', '.join(self.registry.urls)})", "no_experts",
                              retry_after=10)
        experts = self.registry.select(req.experts, known)
        if not experts:
            raise BadRequest(f"none of the experts asked for is known; known experts: "
                             f"{', '.join(e.name for e in known)}", "unknown_experts")
        ranking = self.router.rank(req.task, experts)
        if not self._run_slots.acquire(blocking=False):  # released when the run ends (_run)
            raise Busy(f"busy: {self.settings.max_runs} runs in progress, try again shortly", "too_many_runs",
                       retry_after=10)
        return experts, ranking

    def integrate(self, req: IntegrateRequest) -> IntegrateResponse:
        experts, ranking = self._prepare(req)
        return self._run(req, experts, ranking, None)

    def _run(self, req: IntegrateRequest, experts, ranking, emit: Emit | None,
             cancelled: threading.Event | None = None) -> IntegrateResponse:
        try:
            return self._run_held(req, experts, ranking, emit, cancelled)
        finally:
            self._run_slots.release()

    def _run_held(self, req: IntegrateRequest, experts, ranking, emit: Emit | None,
                  cancelled: threading.Event | None) -> IntegrateResponse:
        """A run in one of the MAX_RUNS slots (taken by _prepare): one trace span, its model calls counted."""
        run_id = uuid.uuid4().hex
        emit = emit or (lambda event: None)

        def observed(event: RunEvent) -> None:
            if isinstance(event, Answered):
                self._count(event.step)
            emit(event)

        with tracing.agent_span(PANEL_NAME, run_id, req.strategy) as span, tracing.counting() as ledger:
            try:
                response = self._run_traced(req, experts, ranking, observed, cancelled, run_id, ledger)
            finally:
                self.metrics.model_tokens.labels("orchestrator", "input").inc(ledger.input_tokens)
                self.metrics.model_tokens.labels("orchestrator", "output").inc(ledger.output_tokens)
            tracing.record_usage(span, response.usage.total.input_tokens, response.usage.total.output_tokens)
            return response

    def _count(self, step: Step) -> None:
        """A consultation in Prometheus: its time by outcome, its tokens."""
        expert = step.expert or "none"
        self.metrics.consultations.labels(expert, str(step.ok).lower()).observe(step.elapsed_ms / 1000)
        if step.usage is not None:
            self.metrics.model_tokens.labels(expert, "input").inc(step.usage.prompt_tokens)
            self.metrics.model_tokens.labels(expert, "output").inc(step.usage.completion_tokens)

    def _run_traced(self, req: IntegrateRequest, experts, ranking, emit: Emit,
                    cancelled: threading.Event | None, run_id: str, ledger: tracing.Ledger) -> IntegrateResponse:
        started, created = time.perf_counter(), time.time()
        saving = threading.Lock()

        def progress(event: RunEvent) -> None:
            """Each answered consultation is stored as it lands, so any replica can follow the run (``follow``)."""
            if isinstance(event, Answered):
                with saving:  # the panel's consultations answer from several threads: the newest steps win
                    try:
                        self.runs.save(record.model_copy(update={"steps": list(trace.steps),
                                                                 "experts": list(trace.consulted)}))
                    except StorageFull as exc:  # the run goes on; its end says whether it was kept
                        log.error("run %s: %s", run_id, exc)
            emit(event)

        trace = RunTrace(emit=progress, cancelled=cancelled or threading.Event(),
                         deadline=time.monotonic() + self.settings.run_timeout_s, parent=tracing.current(),
                         started=started, ranking=[{"expert": r.name, "score": round(r.score, 4)} for r in ranking])
        record = RunRecord(response="", run_id=run_id, strategy=req.strategy, experts=[], steps=[], elapsed_ms=0,
                           task=req.task, created_at=created, status="running")
        self.runs.save(record)
        trace.emit(Started(run_id, req.strategy, trace.ranking))
        assert self.composer is not None  # loaded with the router, which _prepare required
        try:
            fallback = self.strategies[req.strategy].gather(req, experts, ranking, trace)
            trace.check_cancelled()
            composition = self.composer.compose(req.task, trace.steps, trace.remaining_s())
            sources = cite(composition, trace.steps)
        except Exception as exc:
            log.exception("run %s failed", run_id)
            record = record.model_copy(update={"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                               "steps": trace.steps, "experts": trace.consulted,
                                               "usage": self._usage(trace.steps, ledger),
                                               "elapsed_ms": int((time.perf_counter() - started) * 1000)})
            self.runs.save(record)
            raise
        response = IntegrateResponse(response=composition.response, run_id=run_id, strategy=req.strategy,
                                     experts=trace.consulted, steps=trace.steps, fallback=fallback,
                                     synthesis_ms=composition.synthesis_ms, merge=composition.merge,
                                     attribution=composition.attribution, checks=composition.checks,
                                     sources=sources, language=_language(trace.steps),
                                     usage=self._usage(trace.steps, ledger),
                                     elapsed_ms=int((time.perf_counter() - started) * 1000))
        try:
            self.runs.save(RunRecord(**response.model_dump(), task=req.task, created_at=created, status="done"))
        except StorageFull as exc:  # the answer is made: give it, and say it was not kept
            log.error("run %s: %s", run_id, exc)
            response = response.model_copy(update={"stored": False, "warning": str(exc)})
        return response

    def _usage(self, steps: list[Step], ledger: tracing.Ledger) -> RunUsage:
        """What the run consumed, per expert (as each counted its tokens), of the orchestrator's model, in total;
        with costs where PRICES names the model."""
        prices = self.settings.prices
        experts: dict[str, UsageFigures] = {}
        for s in steps:
            if s.expert is None:
                continue
            figures = experts.setdefault(s.expert, UsageFigures())
            figures.calls += 1
            figures.elapsed_ms += s.elapsed_ms
            if s.usage is not None:
                figures.input_tokens += s.usage.prompt_tokens
                figures.output_tokens += s.usage.completion_tokens
                figures.cost = _add(figures.cost, _cost(prices.get(s.model or ""), s.usage.prompt_tokens,
                                                        s.usage.completion_tokens))
        own = UsageFigures(input_tokens=ledger.input_tokens, output_tokens=ledger.output_tokens, calls=ledger.calls,
                           elapsed_ms=int(ledger.elapsed_s * 1000),
                           cost=_cost(prices.get(self.engine.model_name), ledger.input_tokens, ledger.output_tokens))
        parts = [*experts.values(), own]
        costs = [p.cost for p in parts if p.cost is not None]
        total = UsageFigures(input_tokens=sum(p.input_tokens for p in parts),
                             output_tokens=sum(p.output_tokens for p in parts), calls=sum(p.calls for p in parts),
                             elapsed_ms=sum(p.elapsed_ms for p in parts), cost=sum(costs) if costs else None)
        return RunUsage(experts=experts, orchestrator=own, total=total)

    # ---- A2A ------------------------------------------------------------------------------------------------------
    def a2a_turn(self, text: str, context_id: str, cancelled: threading.Event) -> Iterator[Progress]:
        """One A2A message as a run of the panel: each consultation a status update, the composed answer the
        artifact. A cancelled task stops the run: no further expert is asked and nothing is composed (an expert
        already answering finishes its answer)."""
        for event in self.events(IntegrateRequest(task=text), cancelled):
            if cancelled.is_set():
                return
            if isinstance(event, Asking):
                yield Progress("status", f"asking {event.expert}: {event.reason or event.thought}")
            elif isinstance(event, Answered):
                yield Progress("status", f"{event.step.expert} answered" if event.step.ok else event.step.observation)
            elif isinstance(event, Finished):  # the answer ends the task, whether or not the run log could keep it
                yield Progress("delta", event.response.response)
                return
            elif isinstance(event, Failed):
                raise RuntimeError(str(event.error))

    def follow(self, run_id: str) -> Iterator[RunEvent]:
        """A stored run's events, from whichever replica runs it: its start, each consultation as it is stored, then
        its answer or its failure. Raises NotFound before the stream starts."""
        record = self.runs.get(run_id)
        if record is None:
            raise NotFound(f"no run {run_id}")

        def stream(record: RunRecord) -> Iterator[RunEvent]:
            yield Started(run_id, record.strategy, (record.steps[0].ranking or []) if record.steps else [])
            sent = 0
            deadline = time.monotonic() + self.settings.run_timeout_s + 60
            while True:
                for step in record.steps[sent:]:
                    yield Answered(step)
                sent = len(record.steps)
                if record.status == "done":
                    fields = record.model_dump(include=set(IntegrateResponse.model_fields))
                    yield Finished(IntegrateResponse.model_validate(fields))
                    return
                if record.status == "failed" or time.monotonic() > deadline:
                    yield Failed(ConclaveError(record.error or "the run did not end in time", "run_failed"))
                    return
                time.sleep(FOLLOW_POLL_S)
                record = self.runs.get(run_id) or record

        return stream(record)

    def integrate_events(self, req: IntegrateRequest,
                         cancelled: threading.Event | None = None) -> Iterator[tuple[str, dict]]:
        """:meth:`events` as server-sent events: ``(name, data)`` pairs."""
        return (event.wire() for event in self.events(req, cancelled))

    def events(self, req: IntegrateRequest, cancelled: threading.Event | None = None) -> Iterator[RunEvent]:
        """Run in the background and yield its events as they happen, ending with Finished or Failed."""
        experts, ranking = self._prepare(req)  # errors here are plain HTTP errors, before the stream starts
        events: queue.Queue = queue.Queue()
        cancelled = cancelled or threading.Event()

        def end_for_shutdown() -> None:
            cancelled.set()
            events.put(Failed(Unavailable("the orchestrator is shutting down: this run was stopped", "shutting_down",
                                          retry_after=5)))
            events.put(_END)

        self._streams.add(end_for_shutdown)

        def work() -> None:
            try:
                response = self._run(req, experts, ranking, events.put, cancelled)
                events.put(Finished(response))
                if not response.stored:  # the stream ends with the reason the run was not kept
                    events.put(Failed(StorageFull(response.warning or "", "storage_full")))
            except Exception as exc:  # a domain error keeps its type; anything else is a server_error
                events.put(Failed(exc))
            finally:
                events.put(_END)

        threading.Thread(target=work, daemon=True, name="integrate-stream").start()

        def stream() -> Iterator[RunEvent]:
            try:
                while (item := events.get()) is not _END:
                    yield item
            finally:
                self._streams.discard(end_for_shutdown)

        return stream()


_END = object()  # after a run's last event: what the events' reader stops at
FOLLOW_POLL_S = 0.5  # how often a follower reads a run another replica (or this one) is writing

PANEL_NAME = "Conclave panel"
PANEL_SKILL = AgentSkill(
    id="expert-panel", name="Expert panel",
    description="Routes a task to the relevant experts (AI, law, and any configured persona), consults them, and "
    "composes one answer that says who contributed what, with the experts' sources.",
    tags=["panel", "multi-agent", "law", "artificial intelligence"],
    examples=["Is training a model on scraped personal data legal under the GDPR, and how can it be anonymised?"])


def _cost(price: tuple[float, float] | None, input_tokens: int, output_tokens: int) -> float | None:
    """Tokens at a price per million (input, output), or None without a price."""
    return None if price is None else round((input_tokens * price[0] + output_tokens * price[1]) / 1e6, 8)


def _add(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else a + b


def _language(steps) -> AnswerLanguage | None:
    """The answer's language as the experts report it: a note (the model could not write the task's language) wins."""
    reported = [s.language for s in steps if s.ok and s.language]
    return next((r for r in reported if r.note), reported[0] if reported else None)
