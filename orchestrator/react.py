"""The ReAct agent: LangChain's classic agent (langchain_classic) with every step decoded under a grammar.

The grammar admits only ``<thought>\\nAction: <known tool>\\nAction Input: <one line>`` or
``<thought>\\nFinal Answer: <text>``, so the output parser below cannot fail on what the model writes, and the
"Invalid Format: Missing 'Action:'" loop of local models cannot happen. Which tools a step may name, and whether it may
answer yet, follows the routing policy: with ``ranking``, a clear semantic ranking decides the first consultation and
close runners-up are consulted too before an answer is allowed.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from langchain_classic.agents import AgentExecutor, AgentOutputParser, create_react_agent
from langchain_core.agents import AgentAction, AgentFinish
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.prompts import PromptTemplate
from langchain_core.tools import Tool

from orchestrator.llm import EngineLLM
from orchestrator.merge import synthesize
from orchestrator.routing import Ranked
from orchestrator.trace import RunTrace

ITERATION_LIMIT_MESSAGE = "Agent stopped due to iteration limit or time limit."
THOUGHT_MAX_CHARS = 200
INPUT_MAX_CHARS = 300

PROMPT = PromptTemplate.from_template(
    """You lead a panel of experts. Consult them with Action, then write the Final Answer from what they said.

Experts, most relevant to this task first ({ranking}):
{tools}

Use this format:
Thought: what to do next
Action: one of [{tool_names}]
Action Input: the question for that expert
Observation: the expert's answer
... (Thought, Action, Action Input and Observation may repeat)
Thought: I now know the final answer
Final Answer: the complete answer to the task, drawing on the experts' answers

Task: {input}
Thought:{agent_scratchpad}"""
)


def react_grammar(tools: list[str], allow_final: bool, question: str | None = None) -> str:
    """EBNF for one ReAct step (the text after 'Thought:').

    The step may name only ``tools`` (none: it must answer), answer only if ``allow_final``, and when ``question``
    is given the Action Input is exactly that text.
    """
    branches = (["action"] if tools else []) + (["final"] if allow_final or not tools else [])
    free_question = f"[^\\n]{{1,{INPUT_MAX_CHARS}}}"
    question_rule = json.dumps(question, ensure_ascii=False) if question is not None else free_question
    rules = [
        f"root ::= thought \"\\n\" ({' | '.join(branches)})",
        f"thought ::= \" \" [^\\n]{{1,{THOUGHT_MAX_CHARS}}}",
        'final ::= "Final Answer: " [^\\x00]+',
    ]
    if tools:
        rules += [f"action ::= \"Action: \" tool \"\\nAction Input: \" {question_rule}",
                  f"tool ::= {' | '.join(json.dumps(t) for t in tools)}"]
    return "\n".join(rules)


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
    """Which experts the next step may name, and whether it may answer, given who has been consulted.

    ``required`` experts are consulted first, in order, with the task itself as the question: a weak model picks
    and phrases worse than the ranking and the user do. ``fresh_only`` keeps a weak model from asking the same
    expert again and again; a strong model (mode ``llm``) may.
    """

    tools: list[str]
    required: list[str]
    task: str
    fresh_only: bool

    def next_grammar(self, consulted: list[str]) -> tuple[str, str]:
        pending = [t for t in self.required if t not in consulted]
        if pending:
            return react_grammar([pending[0]], allow_final=False, question=self.task), "ranking"
        tools = [t for t in self.tools if t not in consulted] if self.fresh_only else self.tools
        return react_grammar(tools, allow_final=bool(consulted)), "llm"


def plan_routing(ranking: list[Ranked], mode: str, ratio: float, task: str) -> RoutingPolicy:
    """``ranking`` mode: the top expert, and every runner-up scoring ``ratio`` of its score or more, go first."""
    tools = [r.name for r in ranking]
    if mode != "ranking" or not ranking:
        return RoutingPolicy(tools, [], task, fresh_only=False)
    top = ranking[0].score
    required = [r.name for r in ranking if r is ranking[0] or (top > 0 and r.score >= ratio * top)]
    return RoutingPolicy(tools, required, task, fresh_only=True)


class _ThoughtCapture(BaseCallbackHandler):
    """Hands each step's thought to the tool that runs next, so the trace records why an expert was asked."""

    def __init__(self) -> None:
        self.thought = ""

    def on_agent_action(self, action: AgentAction, **kwargs: Any) -> None:
        self.thought = action.log.partition("\n")[0].strip()


@dataclass
class Outcome:
    response: str
    fallback: bool
    synthesis_ms: int = 0  # time spent merging answers, so a benchmark can set wall time against the experts'


def synthesized(engine, task: str, trace: RunTrace, timeout_s: float, fallback: bool) -> Outcome:
    """Merge what the experts said into one answer (or say why there is none), timed."""
    started = time.perf_counter()
    answers = trace.answers()
    if not answers:
        reasons = "; ".join(s.observation for s in trace.steps if not s.ok) or "no expert was consulted"
        return Outcome(f"The panel could not produce an answer: {reasons}", fallback=True)
    text = synthesize(engine, task, answers, timeout_s=timeout_s)
    return Outcome(text, fallback, int((time.perf_counter() - started) * 1000))


def run_react(engine, task: str, experts: list, ranking: list[Ranked], trace: RunTrace, *, max_steps: int,
              routing: str, ratio: float, timeout_s: float, expert_max_new_tokens: int) -> Outcome:
    """Run the constrained ReAct loop; if it ends without an answer, synthesise one from the observations."""
    by_name = {e.name: e for e in experts}
    ranked = [r for r in ranking if r.name in by_name]
    policy = plan_routing(ranked, routing, ratio, task)
    ranking_record = [{"expert": r.name, "score": round(r.score, 4)} for r in ranked]
    capture = _ThoughtCapture()
    chosen: dict[str, str] = {}

    def grammar_for(prompt: str) -> str:
        grammar, chosen["by"] = policy.next_grammar(trace.consulted)
        return grammar

    def make_tool(expert) -> Tool:
        def consult(question: str) -> str:
            step = trace.consult(expert, question, capture.thought, chosen.get("by"),
                                 ranking_record if not trace.steps else None, expert_max_new_tokens)
            return step.observation

        return Tool(name=expert.name, func=consult, description=expert.description)

    tools = [make_tool(by_name[r.name]) for r in ranked]
    llm = EngineLLM(engine=engine, grammar_for=grammar_for, timeout_s=timeout_s)
    prompt = PROMPT.partial(ranking=", ".join(f"{r.name} {r.score:.2f}" for r in ranked))
    agent = create_react_agent(llm, tools, prompt, output_parser=GrammarStepParser())
    executor = AgentExecutor(agent=agent, tools=tools, max_iterations=max_steps, max_execution_time=timeout_s,
                             early_stopping_method="force", handle_parsing_errors=True)
    result = executor.invoke({"input": task}, config={"callbacks": [capture]})
    output = (result.get("output") or "").strip()
    if output and output != ITERATION_LIMIT_MESSAGE:
        return Outcome(output, fallback=False)
    return synthesized(engine, task, trace, timeout_s, fallback=True)
