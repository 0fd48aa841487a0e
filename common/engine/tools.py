"""Tool calls as text: how a model is told about tools, how its calls are constrained, and how they are read back.

The format is the widely trained one of Hermes, Qwen and SmolLM3 (xgrammar calls it ``qwen_3``)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A chat template that knows tools renders them itself; for one that does not (the embedded SmolLM2's), the tools are
described in the system message and past calls and results are written into the turns as text. Decoding runs under an
xgrammar structural tag built from the tools' JSON schemas, so every call names a listed tool with arguments that
match its schema.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from .types import Constraint, InvalidConstraint

FORMAT = "qwen_3"
OPEN, CLOSE = "<tool_call>", "</tool_call>"

TOOLS_PROMPT = """# Tools

You may call functions to help with the user's request. Their signatures, as JSON, are:
<tools>
{tools}
</tools>

To call a function, answer with one JSON object per call, each inside <tool_call></tool_call> tags:
<tool_call>
{{"name": <function name>, "arguments": <the arguments as a JSON object>}}
</tool_call>"""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


def tool_constraint(tools: list[dict], tool_choice: str | dict, parallel: bool) -> Constraint | None:
    """The structural tag that admits only valid calls (``auto`` also admits plain text before them); None when the
    choice is ``none``."""
    if tool_choice == "none" or not tools:
        return None
    import xgrammar as xgr  # here, not at import: the wire schemas import this module, and xgrammar loads torch

    bounded = [{**t, "function": {**t["function"], "parameters": _bounded(t["function"].get("parameters") or {})}}
               if t.get("type") == "function" and "function" in t else t for t in tools]
    try:
        tag = xgr.get_model_structural_tag(FORMAT, tools=bounded, tool_choice=tool_choice, reasoning=False,
                                           parallel_tool_calls=parallel, max_whitespace_cnt=MAX_WHITESPACE)
    except ValueError as exc:  # a named tool that is not listed, a malformed tool
        raise InvalidConstraint(f"tools: {exc}") from exc
    spec = json.loads(tag.model_dump_json())
    fmt = spec["format"]
    if tool_choice == "required" and fmt.get("type") == "triggered_tags":
        # xgrammar's "required" still admits text before the first call, and a small model can wander there
        # for its whole budget: the answer is calls and nothing else.
        spec["format"] = {"type": "tags_with_separator", "tags": fmt["tags"], "separator": "\n",
                          "at_least_one": True, "stop_after_first": not parallel}
    return Constraint("structural_tag", json.dumps(spec))


MAX_STRING = 256  # characters of a string argument whose schema sets no maxLength
MAX_WHITESPACE = 8  # spaces or newlines in a row inside a call's JSON: indentation, not a run of blanks to the budget
MAX_ITEMS = 16  # items of an array (or members of a free-form object) whose schema sets no bound
MAX_NAME = 64  # characters of a member name in a free-form object
MAX_MAGNITUDE = 10**15  # a number without minimum/maximum stays within +-1e15 (and so a bounded run of digits)

_SCALAR: dict = {"anyOf": [{"type": "string", "maxLength": MAX_STRING},
                           {"type": "number", "minimum": -MAX_MAGNITUDE, "maximum": MAX_MAGNITUDE},
                           {"type": "boolean"}, {"type": "null"}]}
_FREE_OBJECT: dict = {"type": "object", "additionalProperties": _SCALAR, "maxProperties": MAX_ITEMS,
                      "propertyNames": {"maxLength": MAX_NAME}}
# Any JSON value, nested one level deep: what an argument whose schema says nothing is decoded as.
_FREE: dict = {"anyOf": [*_SCALAR["anyOf"], {"type": "array", "items": _SCALAR, "maxItems": MAX_ITEMS}, _FREE_OBJECT]}

_SUBSCHEMA = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_SAYS_WHAT = ("type", "anyOf", "oneOf", "allOf", "enum", "const", "$ref", "properties", "items", "not")


def _bounded(schema: object) -> object:
    """The schema with every unbounded string, array, number and free-form value bounded, for decoding only (calls
    are checked against the caller's own schema): a small model that starts repeating inside an argument ("I", "V",
    "I", "V", ..., an endless run of digits, objects nested in objects) would otherwise run out of tokens mid-call,
    and half a call is no call."""
    if not isinstance(schema, dict):
        return schema
    if not any(k in schema for k in _SAYS_WHAT):
        return {**schema, **_FREE}
    out = dict(schema)
    for key in _SUBSCHEMA:
        if isinstance(out.get(key), dict):
            out[key] = _bounded(out[key])
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _bounded(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_bounded(sub) for sub in out[key]]
    if "enum" in out or "const" in out:
        return out
    kinds = out.get("type") if isinstance(out.get("type"), list) else [out.get("type")]
    if "string" in kinds and "maxLength" not in out:
        out["maxLength"] = MAX_STRING
    if "array" in kinds:
        out.setdefault("maxItems", MAX_ITEMS)
        if "prefixItems" not in out:
            out.setdefault("items", _FREE)
    if "object" in kinds and not any(k in out for k in ("properties", "additionalProperties", "patternProperties")):
        out.update({k: v for k, v in _FREE_OBJECT.items() if k not in out})
        out["additionalProperties"] = _FREE
    if "number" in kinds or "integer" in kinds:
        low, high = _bound(out, "minimum"), _bound(out, "maximum")
        if low is None:
            out["minimum"] = min(-MAX_MAGNITUDE, high if high is not None else 0)
        if high is None:
            out["maximum"] = max(MAX_MAGNITUDE, low if low is not None else 0)
    return out


def _bound(schema: dict, side: str) -> float | None:
    """A number's lower or upper bound, inclusive or exclusive (draft 4's boolean ``exclusiveMinimum`` is no bound)."""
    for key in (side, "exclusive" + side.capitalize()):
        value = schema.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def template_knows_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in chat_template


def with_tools_prompt(messages: list[dict[str, Any]], tools: list[dict] | None) -> list[dict[str, str]]:
    """Messages for a template that knows nothing of tools: the tools described in the system message, past calls
    written as ``<tool_call>`` text, tool results as user turns in ``<tool_response>`` tags."""
    out: list[dict[str, str]] = []
    for m in messages:
        content = m.get("content") or ""
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = "\n".join(_call_text(c) for c in m["tool_calls"])
            out.append({"role": "assistant", "content": f"{content}\n{calls}".strip()})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": m["role"], "content": content})
    if tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        prompt = TOOLS_PROMPT.format(tools=listing)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def for_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template that renders tools itself: templates expect a call's arguments as an object."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [{**c, "function": {**c["function"], "arguments": _arguments(c["function"])}}
                     for c in m["tool_calls"]]
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out


def _arguments(function: dict) -> object:
    arguments = function.get("arguments") or "{}"
    try:
        return json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return arguments  # kept as the caller sent it


def _call_text(call: dict) -> str:
    function = call.get("function") or {}
    body = json.dumps({"name": function.get("name", ""), "arguments": _arguments(function)}, ensure_ascii=False)
    return f"{OPEN}\n{body}\n{CLOSE}"


def parse_call(body: str) -> ToolCall:
    """One call's JSON (between the tags). Under the structural tag it always parses; from elsewhere it may not."""
    try:
        value = json.loads(body)
        name, arguments = value["name"], value.get("arguments", {})
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a tool call: {body[:200]!r}") from exc
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", str(name), json.dumps(arguments, ensure_ascii=False))


def split(text: str) -> tuple[str, list[ToolCall]]:
    """A whole answer as its plain text and its calls."""
    reader = CallReader()
    parts = reader.feed(text) + reader.close()
    return "".join(p for p in parts if isinstance(p, str)).strip(), [p for p in parts if isinstance(p, ToolCall)]


class CallReader:
    """Reads a streamed answer: plain text as it comes, each call once its closing tag arrives.

    Text that could be the start of ``<tool_call>`` is held back until it is clearly not; whitespace between calls is
    dropped. A call identical to an earlier one (same function, same arguments) is dropped too: a small model under
    a grammar that admits several calls tends to repeat its first one, and running a call twice helps nobody."""

    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False
        self._calls = 0
        self._seen: set[tuple[str, str]] = set()

    def feed(self, delta: str) -> list[str | ToolCall]:
        self._buffer += delta
        out: list[str | ToolCall] = []
        while True:
            if self._in_call:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    return out
                found = parse_call(self._buffer[:end].strip())
                if (found.name, found.arguments) not in self._seen:
                    self._seen.add((found.name, found.arguments))
                    out.append(found)
                self._calls += 1
                self._buffer, self._in_call = self._buffer[end + len(CLOSE):], False
                continue
            start = self._buffer.find(OPEN)
            if start >= 0:
                self._text(out, self._buffer[:start])
                self._buffer, self._in_call = self._buffer[start + len(OPEN):], True
                continue
            held = next((n for n in range(min(len(OPEN) - 1, len(self._buffer)), 0, -1)
                         if OPEN.startswith(self._buffer[-n:])), 0)
            self._text(out, self._buffer[: len(self._buffer) - held])
            self._buffer = self._buffer[len(self._buffer) - held:]
            return out

    def close(self) -> list[str | ToolCall]:
        """What is left at the end: held-back text, or an unfinished call (kept as text: it is not a valid call)."""
        rest = (OPEN + self._buffer) if self._in_call else self._buffer
        self._buffer, self._in_call = "", False
        out: list[str | ToolCall] = []
        self._text(out, rest)
        return out

    def _text(self, out: list[str | ToolCall], text: str) -> None:
        if text and (not self._calls or text.strip()):
            out.append(text)
