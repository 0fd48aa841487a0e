"""Fakes for unit tests only: an engine that answers from a script, with the real engine's interface."""

from __future__ import annotations

import threading
import time

from common.embedding import SentenceEmbedder
from common.engine.types import CONSTRAINT_KINDS, EngineError, Generation, GenerationRequest


class FakeEngine:
    """Echoes a scripted answer word by word. ``answer`` may be a function of the request; ``error`` fails it."""

    model_name = "fake-model"
    model_spec = "fake"
    running_rows = 0
    failed = False
    waiting = 0
    runtime = {"dtype": "fake"}

    def __init__(self, answer="Hello from the fake engine.", ready: bool = True, error: EngineError | None = None,
                 delay_s: float = 0.0, kinds: frozenset[str] = CONSTRAINT_KINDS):
        self.answer = answer
        self.kinds = kinds
        self.ready = ready
        self.error = error
        self.delay_s = delay_s
        self.requests: list[GenerationRequest] = []
        self.started: list[float] = []  # monotonic start and end of each request, to show overlap
        self.ended: list[float] = []

    @property
    def status(self) -> str:
        return "ready" if self.ready else "model fake is loading"

    def start(self) -> FakeEngine:
        return self

    def stop(self) -> None:
        pass

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready

    def accepts(self, kind: str) -> bool:
        return kind in self.kinds

    def submit(self, request: GenerationRequest) -> Generation:
        if self.error is not None:
            raise self.error
        self.requests.append(request)
        gen = Generation(request)
        text = self.answer(request) if callable(self.answer) else self.answer
        words = text.split(" ")[: request.max_new_tokens]

        def produce() -> None:
            self.started.append(time.monotonic())
            time.sleep(self.delay_s)
            self.ended.append(time.monotonic())
            for i, word in enumerate(words):
                gen.push(word if i == 0 else " " + word)
            gen.finish(len(str(request.messages)), len(words), "stop")

        threading.Thread(target=produce, daemon=True).start()
        return gen


class Truncated(str):
    """A scripted step cut off by its token limit: only the start of what the grammar admits."""


class ScriptedEngine(FakeEngine):
    """The orchestrator's brain in unit tests: answers from a script, one entry per call.

    An entry is a string or a function of the request. Every answer given under a constraint is checked against it
    (with xgrammar, or jsonschema for JSON), so a script cannot pass a test with a step the real engine could never
    produce.
    """

    def __init__(self, script, kinds: frozenset[str] = CONSTRAINT_KINDS):
        super().__init__(kinds=kinds)
        self.script = list(script)

    def submit(self, request: GenerationRequest) -> Generation:
        from common.engine.checking import satisfies

        entry = self.script.pop(0) if self.script else "Final Answer: out of script"
        text = entry(request) if callable(entry) else entry
        if request.constraint is not None and not isinstance(text, Truncated):
            assert self.accepts(request.constraint.kind), request.constraint.kind
            assert satisfies(request.constraint, text), (text, request.constraint.value)
        self.requests.append(request)
        gen = Generation(request)
        gen.push(text)
        gen.finish(10, len(text.split()), "length" if isinstance(text, Truncated) else "stop")
        return gen


class KeywordEmbedder(SentenceEmbedder):
    """Embeds text as counts of law words and computing words: enough to make the router's ranking predictable."""

    name = "keywords"
    LAW = ("law", "legal", "gdpr", "regulation", "liab", "contract", "court", "compliance")
    TECH = ("neural", "network", "model", "algorithm", "software", "data", "machine", "comput", "ai ")
    floor = 0.75  # a text with neither kind of word lies at 45 degrees: cosine 0.71 to anything, which says nothing

    def __call__(self, texts):
        import torch

        rows = []
        for t in texts:
            low = t.lower() + " "
            rows.append([sum(low.count(w) for w in self.LAW) + 0.01, sum(low.count(w) for w in self.TECH) + 0.01])
        return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


class WordsEmbedder(SentenceEmbedder):
    """Embeds text as a bag of its words (hashed into MiniLM's 384 dimensions, so a knowledge store takes them):
    cosine then measures shared wording, which makes the composer's grounding and duplicate checks predictable."""

    name = "words"
    def __call__(self, texts):
        import re
        import zlib

        import torch

        rows = torch.zeros((len(texts), 384))
        for i, t in enumerate(texts):
            for word in re.findall(r"\w+", t.lower()):
                rows[i, zlib.crc32(word.encode()) % 384] += 1.0
        return torch.nn.functional.normalize(rows + 1e-6, dim=-1)


def expert_app(settings, engine, embedder=WordsEmbedder):
    """An expert app on a fake engine, its knowledge base (the catalog's notes) embedded by ``embedder`` and synced."""
    from agents.app import create_app

    app = create_app(settings, engine, embedder)
    assert app.extensions["expert"].knowledge.ready.wait(60), "knowledge sync did not finish"
    return app
