"""The ReAct agent: LangChain's classic agent (langchain_classic) with every step decoded under a grammar.

The grammar admits only ``<thought>\\nAction: <known tool>\\nAction Input: <one line>`` or
``<thought>\\nFinal Answer: <text>``, so the output parser below cannot fail on what the model writes, and the
"Invalid Format: Missing 'Action:'" loop of local models cannot happen. Which tools a step may name, and whether it may
finish yet, follows the routing policy: with ``ranking``, a clear semantic ranking decides who is consulted (the best
expert and close runners-up), all at once, and the steps it decides are not generated. The loop only decides whom to
ask: the answer is written by ``orchestrator.composer``.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from langchain_classic.agents import AgentExecutor, AgentOutputParser, create_react_agent
from langchain_core.agents import AgentAction, AgentFinish
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.prompts import PromptTemplate
from langchain_core.tools import Tool

from common.engine.types import EngineError
from orchestrator.llm import Decided, EngineLLM
from orchestrator.routing import Ranked
from orchestrator.trace import RunTrace

log = logging.getLogger(__name__)

ITERATION_LIMIT_MESSAGE = "Agent stopped due to iteration limit or time limit."
THOUGHT_MAX_CHARS = 200
INPUT_MAX_CHARS = 300

PROMPT = PromptTemplate.from_template(
    """You lead a panel of experts. Consult the experts the task needs with Action; the panel's answer is then
composed from what they said.

Experts, most relevant to this task first ({ranking}):
{tools}

Use this format:
Thought: what to do next
Action: one of [{tool_names}]
Action Input: the question for that expert
Observation: the expert's answer
... (Thought, Action, Action Input and Observation may repeat)
Thought: the experts the task needs have answered
Final Answer: one line saying what the answer covers

Task: {input}
Thought:{agent_scratchpad}"""
)
FINAL = "Final Answer"
# When the routing policy leaves nothing to decide (every expert it allows has answered), the step is this text and
# the model is not called.
FINISHED = Decided(" The experts the task needs have answered.\nFinal Answer: composed from their answers")


@dataclass(frozen=True)
class StepForm:
    """What one ReAct step (the text after 'Thought:') may say: name only ``tools`` (none: it must finish), and finish
    only if ``allow_final``. Finishing takes one line: the composer writes the answer.

    A server that takes grammars decodes the step as ReAct text under ``grammar()``; one that takes only JSON schemas
    (OpenAI, Ollama, TGI) decodes ``schema()``, and ``from_json`` writes the same ReAct text from it, so the agent
    and its parser see one format whichever server runs the brain."""

    tools: tuple[str, ...]
    allow_final: bool

    @property
    def may_finish(self) -> bool:
        return self.allow_final or not self.tools

    def grammar(self) -> str:
        branches = (["action"] if self.tools else []) + (["final"] if self.may_finish else [])
        rules = [
            f"root ::= thought \"\\n\" ({' | '.join(branches)})",
            f"thought ::= \" \" [^\\n]{{1,{THOUGHT_MAX_CHARS}}}",
            f'final ::= "Final Answer: " [^\\n]{{1,{THOUGHT_MAX_CHARS}}}',
        ]
        if self.tools:
            rules += [f"action ::= \"Action: \" tool \"\\nAction Input: \" [^\\n]{{1,{INPUT_MAX_CHARS}}}",
                      f"tool ::= {' | '.join(json.dumps(t) for t in self.tools)}"]
        return "\n".join(rules)

    def schema(self) -> dict:
        actions = [*self.tools, *([FINAL] if self.may_finish else [])]
        question = {"type": "string", "minLength": 1, "maxLength": INPUT_MAX_CHARS}
        return {"type": "object", "additionalProperties": False, "required": ["thought", "action", "input"],
                "properties": {"thought": {"type": "string", "minLength": 1, "maxLength": THOUGHT_MAX_CHARS},
                               "action": {"type": "string", "enum": actions},
                               "input": question}}

    def from_json(self, text: str) -> str:
        """The ReAct text a JSON step stands for; its fields are single lines, as the grammar's are."""
        step = json.loads(text)
        thought, action, value = (" ".join(str(step[k]).split()) for k in ("thought", "action", "input"))
        if action == FINAL:
            return f" {thought}\nFinal Answer: {value}"
        return f" {thought}\nAction: {action}\nAction Input: {value}"


class GrammarStepParser(AgentOutputParser):
    """Parses the grammar's output by its structure: the thought is the first line, the second line says what next.

    Structure, not keyword search: a thought or question that happens to contain "Final Answer:" (say, copied from a
    hostile task) cannot turn into a second, conflicting instruction.
    """

    def parse(self, text: str) -> AgentAction | AgentFinish:
        thought, _, rest = text.partition("\n")
        match = re.match(r"Action: (.+?)\nAction Input: (.*)", rest, re.DOTALL)
        if match:
            return AgentAction(match.group(1).strip(), match.group(2).strip(), text)
        answer = rest[len("Final Answer:"):] if rest.startswith("Final Answer:") else (rest or thought)
        return AgentFinish({"output": answer.strip()}, text)

    @property
    def _type(self) -> str:
        return "conclave-grammar-react"


@dataclass
class RoutingPolicy:
    """Which experts the next step may name, and whether it may finish, given who has been consulted.

    ``required`` experts are consulted first, with the task itself as the question: a weak model picks and phrases
    worse than the ranking and the user do. Such a step has nothing left to decide, so it is :class:`Decided`, not
    generated (its thought is the ranking's reason). In ``ranking`` mode they are the only ones: a small model left to
    choose more consults the other domain's expert on nearly every task, and that answer pollutes the result. In
    ``llm`` mode a strong model chooses freely and decides when it has enough.
    """

    tools: list[str]
    required: list[str]
    task: str
    mode: str
    reasons: dict[str, str]

    def next_step(self, consulted: list[str], answered: list[str]) -> tuple[StepForm | Decided, str]:
        pending = [t for t in self.required if t not in consulted]
        if pending:
            return self._decided(pending[0]), "ranking"
        if self.mode != "ranking" or not consulted:
            return StepForm(tuple(self.tools), allow_final=bool(consulted)), "llm"
        if not answered:  # every chosen expert failed: the best-ranked one left stands in for them
            spare = [t for t in self.tools if t not in consulted]
            if spare:
                self.reasons[spare[0]] = f"stands in for {', '.join(consulted)}, which did not answer"
                return self._decided(spare[0]), "ranking"
        return FINISHED, "ranking"

    def _decided(self, name: str) -> Decided:
        """The step that asks ``name`` the task, written out: the ranking chose it, so the model is not called."""
        return Decided(f" {self.reasons[name]}\nAction: {name}\nAction Input: {self.task}")

    def reason(self, name: str, thought: str) -> str:
        return self.reasons.get(name) or f"chosen by the model: {thought or 'no reason given'}"


def plan_routing(ranking: list[Ranked], mode: str, ratio: float, task: str) -> RoutingPolicy:
    """``ranking`` mode: the top expert, and every runner-up scoring ``ratio`` of its score or more, and no other."""
    tools = [r.name for r in ranking]
    if mode != "ranking" or not ranking:
        return RoutingPolicy(tools, [], task, mode, {})
    top = ranking[0]
    reasons = {top.name: f"ranked first for this task (relevance {top.score:.2f})"}
    for r in ranking[1:]:
        if top.score > 0 and r.score >= ratio * top.score:
            reasons[r.name] = (f"close runner-up (relevance {r.score:.2f}, at least {ratio:.0%} of the best, "
                               f"{top.score:.2f})")
    return RoutingPolicy(tools, list(reasons), task, mode, reasons)


class _ThoughtCapture(BaseCallbackHandler):
    """Hands each step's thought to the tool that runs next, so the trace records why an expert was asked."""

    def __init__(self) -> None:
        self.thought = ""

    def on_agent_action(self, action: AgentAction, **kwargs: Any) -> None:
        self.thought = action.log.partition("\n")[0].strip()


def run_react(engine, task: str, experts: list, ranking: list[Ranked], trace: RunTrace, *, max_steps: int,
              routing: str, ratio: float, expert_max_new_tokens: int) -> bool:
    """Run the constrained ReAct loop, which decides whom to consult. True when it hit its step or time limit.

    The experts the ranking requires are asked at once, in parallel, as the loop starts: their steps are decided, so
    waiting for one before asking the next would only add their times up. The loop's steps then take their answers.
    """
    by_name = {e.name: e for e in experts}
    ranked = [r for r in ranking if r.name in by_name]
    policy = plan_routing(ranked, routing, ratio, task)
    capture = _ThoughtCapture()
    chosen: dict[str, str] = {}

    def step_for(prompt: str) -> StepForm | Decided:
        step, chosen["by"] = policy.next_step(trace.consulted, trace.answered)
        return step

    def make_tool(expert) -> Tool:
        def consult(question: str) -> str:
            asked = ahead.pop(expert.name, None)
            thought = capture.thought if chosen.get("by") == "llm" else ""  # a decided step's thought is its reason
            step = asked.result() if asked is not None else trace.consult(
                expert, question, thought, chosen.get("by"), expert_max_new_tokens,
                reason=policy.reason(expert.name, thought))
            return step.observation

        return Tool(name=expert.name, func=consult, description=expert.description)

    tools = [make_tool(by_name[r.name]) for r in ranked]
    # A step is a thought, an expert's name and a question, which may be the whole task: room for all of it (two
    # tokens a character covers CJK text), so a long task is never cut off mid-step.
    step_tokens = 64 + THOUGHT_MAX_CHARS + 2 * max(len(task), INPUT_MAX_CHARS)
    llm = EngineLLM(engine=engine, step_for=step_for, deadline=trace.deadline, max_new_tokens=min(step_tokens, 4096))
    prompt = PROMPT.partial(ranking=", ".join(f"{r.name} {r.score:.2f}" for r in ranked))
    agent = create_react_agent(llm, tools, prompt, output_parser=GrammarStepParser())
    executor = AgentExecutor(agent=agent, tools=tools, max_iterations=max_steps,
                             max_execution_time=trace.remaining_s(),
                             early_stopping_method="force", handle_parsing_errors=True)
    ahead: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(policy.required))) as pool:  # its exit waits for every answer
        for name in policy.required:
            ahead[name] = pool.submit(trace.consult, by_name[name], task, "", "ranking", expert_max_new_tokens,
                                      reason=policy.reasons[name])
        try:
            output = (executor.invoke({"input": task}, config={"callbacks": [capture]}).get("output") or "").strip()
        except EngineError as exc:  # a remote brain's step broke its constraint twice, or failed: the ranking decides
            log.warning("ReAct step failed, the run degrades to the ranking's choice: %s", exc)
            output = ""
    # A step that did not come out whole must not cost the run its experts: the ranking's choice is asked directly.
    # With the model choosing freely (routing 'llm'), that is the first-ranked expert when nobody was consulted.
    if not policy.required and not trace.consulted and ranked:
        policy.reasons[ranked[0].name] = f"ranked first for this task (relevance {ranked[0].score:.2f})"
        policy.required.append(ranked[0].name)
    for name in policy.required:
        if name not in trace.consulted:
            trace.consult(by_name[name], task, "", "ranking", expert_max_new_tokens,
                          reason=f"{policy.reasons[name]}; asked directly, as the model's step did not name it")
    return output in ("", ITERATION_LIMIT_MESSAGE)
