"""Mixture-of-Agents aggregation: the experts' answers, numbered, synthesised into one by the orchestrator's LLM."""

from __future__ import annotations

from common.engine.types import GenerationRequest

MERGE_INSTRUCTIONS = (
    "You are the chair of a panel of experts. Below are the experts' answers to a task. Write one clear, complete "
    "answer to the task that combines their correct points. Do not mention the experts or the numbering."
)


ANSWER_MAX_CHARS = 1500  # a small model's context fills fast; the opening of each answer carries most of it


def merge_prompt(task: str, answers: list[tuple[str, str]]) -> str:
    numbered = "\n\n".join(f"Answer {i} ({name}):\n{text[:ANSWER_MAX_CHARS]}" for i, (name, text) in
                           enumerate(answers, 1))
    return f"{MERGE_INSTRUCTIONS}\n\nTask: {task}\n\n{numbered}\n\nWrite the combined answer to the task now."


def synthesize(engine, task: str, answers: list[tuple[str, str]], max_new_tokens: int = 320,
               timeout_s: float = 600.0) -> str:
    """One answer from several (at least one). A single answer has nothing to merge, so it is returned as it is."""
    if len(answers) == 1:
        return answers[0][1]
    request = GenerationRequest(messages=[{"role": "user", "content": merge_prompt(task, answers)}],
                                max_new_tokens=max_new_tokens, repetition_penalty=1.15, timeout_s=timeout_s)
    return engine.submit(request).result().text or answers[0][1]
