"""How each OpenAI-compatible server takes constraints and sampling extras, and how to tell the servers apart.

The servers agree on ``/v1/chat/completions`` and differ on everything a constraint needs:

| dialect   | grammar (EBNF)   | regex            | choice                   | JSON schema         | structural tag |
|-----------|------------------|------------------|--------------------------|---------------------|----------------|
| vllm      | structured_outputs.grammar | .regex | .choice                  | .json               | .structural_tag |
| llamacpp  | grammar (GBNF)   | GBNF             | GBNF                     | response_format     | GBNF of calls  |
| tgi       | refused          | response_format regex | regex               | response_format json | refused       |
| ollama    | refused          | refused          | JSON enum, unwrapped     | response_format     | refused        |
| openai    | refused          | refused          | JSON enum, unwrapped     | response_format     | refused        |

Refused means a 400 before anything is sent, naming the server and the constraint. Whatever the server answers is
checked locally afterwards (``checking.satisfies``): a dialect only says how to ask.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .checking import to_gbnf, tool_calls_gbnf
from .types import Constraint, GenerationRequest, UnsupportedConstraint

DialectName = Literal["vllm", "llamacpp", "tgi", "ollama", "openai"]

CHOICE_KEY = "choice"


def _identity(text: str) -> str:
    return text


@dataclass(frozen=True)
class Wire:
    """A constraint as one server takes it: fields for the request body, and how to read the answer back."""

    fields: dict
    unwrap: Callable[[str], str] = _identity


def _unwrap_choice(text: str) -> str:
    """A choice asked as ``{"choice": <enum>}`` comes back as that object; anything else is passed on to be refused."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value[CHOICE_KEY] if isinstance(value, dict) and isinstance(value.get(CHOICE_KEY), str) else text


def _choice_schema(choices: list[str]) -> dict:
    # An object, not a bare enum: OpenAI's strict structured outputs take only an object at the root.
    return {"type": "object", "properties": {CHOICE_KEY: {"type": "string", "enum": list(choices)}},
            "required": [CHOICE_KEY], "additionalProperties": False}


def _response_format(schema: dict | None, name: str = "answer", strict: bool = False) -> dict:
    if schema is None:
        return {"response_format": {"type": "json_object"}}
    return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                                        "strict": strict}}}


@dataclass(frozen=True)
class Dialect:
    name: DialectName
    label: str
    kinds: frozenset[str] = field(default_factory=frozenset)

    def accepts(self, kind: str) -> bool:
        return kind in self.kinds

    def wire(self, constraint: Constraint, server: str) -> Wire:
        """The constraint in this server's terms, or UnsupportedConstraint naming the server and the constraint."""
        if not self.accepts(constraint.kind):
            raise UnsupportedConstraint(
                f"the {self.label} at {server} cannot take a {constraint.kind} constraint; "
                f"it takes: {', '.join(sorted(self.kinds)) or 'none'}")
        return self._wire(constraint)

    def _wire(self, constraint: Constraint) -> Wire:
        raise NotImplementedError

    def sampling(self, request: GenerationRequest) -> dict:
        """Extras beyond OpenAI's parameters; a hosted API refuses fields it does not know, so each dialect adds only
        its own."""
        return {}


class VLLM(Dialect):
    def _wire(self, constraint: Constraint) -> Wire:
        value = constraint.value
        if constraint.kind == "structural_tag" and isinstance(value, str):
            value = json.loads(value)
        return Wire({"structured_outputs": {constraint.kind: value}})

    def sampling(self, request: GenerationRequest) -> dict:
        extras: dict = {}
        if request.repetition_penalty != 1.0:
            extras["repetition_penalty"] = request.repetition_penalty
        if request.min_new_tokens:
            extras["min_tokens"] = request.min_new_tokens
        return extras


class LlamaCpp(Dialect):
    def _wire(self, constraint: Constraint) -> Wire:
        if constraint.kind == "json":
            return Wire(_response_format(constraint.json_schema()))
        if constraint.kind == "structural_tag":
            grammar = tool_calls_gbnf(json.loads(str(constraint.value)))
            return Wire({"grammar": grammar} if grammar else {})
        return Wire({"grammar": to_gbnf(constraint)})

    def sampling(self, request: GenerationRequest) -> dict:
        return {"repeat_penalty": request.repetition_penalty} if request.repetition_penalty != 1.0 else {}


class TGI(Dialect):
    def _wire(self, constraint: Constraint) -> Wire:
        if constraint.kind == "json":
            return Wire({"response_format": {"type": "json", "value": constraint.json_schema() or {"type": "object"}}})
        if constraint.kind == "choice":
            return Wire({"response_format": {"type": "regex",
                                             "value": "|".join(re.escape(c) for c in constraint.value)}})
        return Wire({"response_format": {"type": "regex", "value": constraint.value}})

    def sampling(self, request: GenerationRequest) -> dict:
        return {"repetition_penalty": request.repetition_penalty} if request.repetition_penalty != 1.0 else {}


class JsonOnly(Dialect):
    """Ollama and OpenAI: JSON schemas through ``response_format``, a choice as a JSON enum read back."""

    def _wire(self, constraint: Constraint) -> Wire:
        if constraint.kind == "choice":
            return Wire(_response_format(_choice_schema(constraint.value), "choice", strict=True), _unwrap_choice)
        return Wire(_response_format(constraint.json_schema()))


DIALECTS: dict[str, Dialect] = {
    "vllm": VLLM("vllm", "vLLM server", frozenset({"grammar", "regex", "choice", "json", "structural_tag"})),
    "llamacpp": LlamaCpp("llamacpp", "llama.cpp server",
                         frozenset({"grammar", "regex", "choice", "json", "structural_tag"})),
    "tgi": TGI("tgi", "TGI server", frozenset({"regex", "choice", "json"})),
    "ollama": JsonOnly("ollama", "Ollama server", frozenset({"choice", "json"})),
    "openai": JsonOnly("openai", "OpenAI-compatible server", frozenset({"choice", "json"})),
}

# /v1/models names its owner on several servers; our own experts speak vLLM's structured_outputs.
OWNERS = {"vllm": "vllm", "llamacpp": "llamacpp", "conclave": "vllm", "library": "ollama", "ollama": "ollama",
          "openai": "openai", "system": "openai", "openai-internal": "openai"}
# Else each server answers one path of its own at its root (the base URL without /v1).
PROBES: list[tuple[str, str, Callable[[object], bool]]] = [
    ("llamacpp", "/props", lambda body: isinstance(body, dict) and "default_generation_settings" in body),
    ("ollama", "/api/version", lambda body: isinstance(body, dict) and "version" in body),
    ("tgi", "/info", lambda body: isinstance(body, dict) and "model_id" in body and "router" in body),
    ("vllm", "/version", lambda body: isinstance(body, dict) and set(body) == {"version"}),
]


def detect(base_url: str, models: list[dict], get_json: Callable[[str], object]) -> Dialect:
    """The dialect of the server at ``base_url``: from its model list's owner, else from the paths only it serves,
    else plain OpenAI (the safest: it sends only what every compatible server takes)."""
    for model in models:
        owner = OWNERS.get(str(model.get("owned_by", "")).lower())
        if owner:
            return DIALECTS[owner]
    root = re.sub(r"/v1/?$", "", base_url.rstrip("/"))
    for name, path, matches in PROBES:
        if matches(get_json(root + path)):
            return DIALECTS[name]
    return DIALECTS["openai"]
