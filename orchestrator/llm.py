"""The orchestrator's brain as a LangChain LLM over our engine interface (local model or OpenAI-compatible server).

A constraint may ride along with each call: the local engine decodes under it with xgrammar, the remote engine sends
it in its server's dialect (a grammar where the server takes one, else a JSON schema) and checks what comes back.
Either way the text that comes back satisfies it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from pydantic import ConfigDict

from common.engine.types import Constraint, GenerationRequest


@dataclass(frozen=True)
class Decided:
    """A step with nothing left to decide: ``step_for`` returns it, and its text is the step, without a call."""

    text: str


class StepForm(Protocol):
    """The shape a step must take, as a grammar or, for servers that take no grammar, a JSON schema."""

    def grammar(self) -> str: ...

    def schema(self) -> dict: ...

    def from_json(self, text: str) -> str: ...


DEFAULT_TIMEOUT_S = 600.0  # a call's limit when no deadline is set


class EngineLLM(LLM):
    """``step_for(prompt)`` picks the form of each call, so one LLM serves a whole constrained ReAct loop."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any
    max_new_tokens: int = 384
    deadline: float = math.inf  # time.monotonic() by which the whole run ends: no call outlives it
    step_for: Callable[[str], StepForm | Decided | None] | None = None

    @property
    def _llm_type(self) -> str:
        return "conclave-engine"

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        step = self.step_for(prompt) if self.step_for else None
        if isinstance(step, Decided):
            return step.text
        constraint, read = None, _as_is
        if step is not None:
            if self.engine.accepts("grammar"):
                constraint = Constraint("grammar", step.grammar())
            else:  # OpenAI, Ollama, TGI: the same step as a JSON object, written back as ReAct text
                constraint, read = Constraint("json", step.schema()), step.from_json
        request = GenerationRequest(
            messages=[{"role": "user", "content": prompt}],
            max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
            stop=[] if constraint else list(stop or []),  # under a constraint the constraint says where a step ends
            constraint=constraint,
            timeout_s=max(1.0, min(DEFAULT_TIMEOUT_S, self.deadline - time.monotonic())),
        )
        return read(self.engine.submit(request).result().text)


def _as_is(text: str) -> str:
    return text
