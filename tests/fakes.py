"""Fakes for unit tests only: an engine that answers from a script, with the real engine's interface."""

from __future__ import annotations

import threading

from common.engine.types import EngineError, Generation, GenerationRequest


class FakeEngine:
    """Echoes a scripted answer word by word. ``answer`` may be a function of the request; ``error`` fails it."""

    model_name = "fake-model"
    model_spec = "fake"
    running_rows = 0
    waiting = 0
    tokens_generated = 0

    def __init__(self, answer="Hello from the fake engine.", ready: bool = True, error: EngineError | None = None):
        self.answer = answer
        self.ready = ready
        self.error = error
        self.requests: list[GenerationRequest] = []

    @property
    def status(self) -> str:
        return "ready" if self.ready else "model fake is loading"

    def start(self) -> "FakeEngine":
        return self

    def submit(self, request: GenerationRequest) -> Generation:
        if self.error is not None and not isinstance(self.error, type):
            raise self.error
        self.requests.append(request)
        gen = Generation(request)
        text = self.answer(request) if callable(self.answer) else self.answer
        words = text.split(" ")[: request.max_new_tokens]

        def produce() -> None:
            for i, word in enumerate(words):
                gen.push(word if i == 0 else " " + word)
            gen.finish(len(str(request.messages)), len(words), "stop")

        threading.Thread(target=produce, daemon=True).start()
        return gen
