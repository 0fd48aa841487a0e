"""The orchestrator's brain as a LangChain LLM over our engine interface (local model or OpenAI-compatible server).

A grammar may ride along with each call: the local engine decodes under it with xgrammar, the remote engine sends it
as ``structured_outputs.grammar``. Either way the text that comes back satisfies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from pydantic import ConfigDict

from common.engine.types import Constraint, GenerationRequest


@dataclass(frozen=True)
class Decided:
    """A step with nothing left to decide: ``grammar_for`` returns it, and its text is the step, without a call."""

    text: str


class EngineLLM(LLM):
    """``grammar_for(prompt)`` picks the grammar of each call, so one LLM serves a whole constrained ReAct loop."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any
    max_new_tokens: int = 384
    timeout_s: float = 600.0
    grammar_for: Callable[[str], str | None] | None = None

    @property
    def _llm_type(self) -> str:
        return "conclave-engine"

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        grammar = kwargs.get("grammar") or (self.grammar_for(prompt) if self.grammar_for else None)
        if isinstance(grammar, Decided):
            return grammar.text
        request = GenerationRequest(
            messages=[{"role": "user", "content": prompt}],
            max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
            stop=[] if grammar else list(stop or []),  # under a grammar the grammar itself says where a step ends
            constraint=Constraint("grammar", grammar) if grammar else None,
            timeout_s=self.timeout_s,
        )
        return self.engine.submit(request).result().text
