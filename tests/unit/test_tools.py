"""Tool calls as text: the constraint admits only valid calls, and the reader finds them in a stream."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.engine import tools
from common.engine.checking import satisfies
from common.engine.types import InvalidConstraint

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def call(name: str, arguments: dict) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n</tool_call>'


PARIS = call("get_weather", {"city": "Paris"})
TIME = call("get_time", {})


def test_required_admits_calls_only_and_parallel_off_admits_one():
    required = tools.tool_constraint([WEATHER, CLOCK], "required", parallel=True)
    assert satisfies(required, PARIS) and satisfies(required, PARIS + "\n" + TIME)
    assert not satisfies(required, "It is sunny.") and not satisfies(required, "")
    assert not satisfies(required, call("get_weather", {"town": "Paris"}))  # arguments must match the schema
    assert not satisfies(required, call("get_stock", {}))  # only listed tools
    single = tools.tool_constraint([WEATHER, CLOCK], "required", parallel=False)
    assert satisfies(single, PARIS) and not satisfies(single, PARIS + "\n" + TIME)


def test_auto_admits_words_or_calls_and_a_named_choice_exactly_that_call():
    auto = tools.tool_constraint([WEATHER], "auto", parallel=True)
    assert satisfies(auto, "It is sunny.") and satisfies(auto, PARIS)
    named = tools.tool_constraint([WEATHER, CLOCK], {"type": "function", "function": {"name": "get_time"}}, True)
    assert satisfies(named, TIME) and not satisfies(named, PARIS)
    assert tools.tool_constraint([WEATHER], "none", True) is None
    with pytest.raises(InvalidConstraint):
        tools.tool_constraint([WEATHER], {"type": "function", "function": {"name": "nope"}}, True)


def test_split_reads_text_and_calls():
    text, calls = tools.split(PARIS + "\n" + TIME)
    assert text == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                                                ("get_time", {})]
    assert tools.split("Just words, and a < sign.") == ("Just words, and a < sign.", [])
    text, calls = tools.split("Let me check. " + PARIS)
    assert text == "Let me check." and calls[0].name == "get_weather"


@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=40))
def test_the_reader_finds_the_same_calls_however_the_stream_is_cut(cuts):
    whole = "Checking <b>both</b>. " + PARIS + "\n" + TIME
    reader, parts, i = tools.CallReader(), [], 0
    for n in cuts * 50:
        if i >= len(whole):
            break
        parts += reader.feed(whole[i:i + n])
        i += n
    parts += reader.feed(whole[i:]) + reader.close()
    assert "".join(p for p in parts if isinstance(p, str)) == "Checking <b>both</b>. "
    assert [p.name for p in parts if isinstance(p, tools.ToolCall)] == ["get_weather", "get_time"]


def test_a_repeated_call_is_kept_once():
    text, calls = tools.split(PARIS + "\n" + PARIS + "\n" + TIME + "\n" + PARIS)
    assert [c.name for c in calls] == ["get_weather", "get_time"] and text == ""


def test_an_unfinished_call_is_text_not_a_call():
    text, calls = tools.split('<tool_call>\n{"name": "get_weather", "argu')
    assert calls == [] and text.startswith("<tool_call>")


def test_a_template_without_tools_gets_them_in_the_system_message_and_the_history_as_text():
    messages = [{"role": "system", "content": "You are a lawyer."}, {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    out = tools.with_tools_prompt(messages, [WEATHER])
    assert out[0]["role"] == "system" and out[0]["content"].startswith("You are a lawyer.")
    assert '"name": "get_weather"' in out[0]["content"] and "<tool_call>" in out[0]["content"]
    assert out[2] == {"role": "assistant", "content": PARIS}
    assert out[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    assert all(isinstance(m["content"], str) for m in out)
    assert tools.template_knows_tools("{% if tools %}...{% endif %}") and not tools.template_knows_tools(None)


def test_decoding_bounds_every_free_run_but_keeps_what_the_caller_bounded():
    bounded = tools._bounded({"type": "object", "properties": {
        "n": {"type": "number"}, "k": {"type": "integer", "minimum": 1}, "x": {"type": "number", "maximum": 5},
        "opts": {"type": "object"}, "raw": {"description": "anything"}, "tags": {"type": "array"},
        "mode": {"type": "string", "enum": ["a", "b"]}, "note": {"type": "string", "maxLength": 10}}})
    props = bounded["properties"]
    assert props["n"]["minimum"] == -tools.MAX_MAGNITUDE and props["n"]["maximum"] == tools.MAX_MAGNITUDE
    assert props["k"]["minimum"] == 1 and props["k"]["maximum"] == tools.MAX_MAGNITUDE
    assert props["x"] == {"type": "number", "maximum": 5, "minimum": -tools.MAX_MAGNITUDE}
    assert props["opts"]["maxProperties"] == tools.MAX_ITEMS and "anyOf" in props["opts"]["additionalProperties"]
    assert "anyOf" in props["raw"] and props["tags"]["maxItems"] == tools.MAX_ITEMS
    assert props["mode"] == {"type": "string", "enum": ["a", "b"]} and props["note"]["maxLength"] == 10
    assert "properties" not in props["opts"]  # a property map is a map of schemas, not a schema


def test_numbers_and_free_form_arguments_end_within_the_bounds():
    spec = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "n": {"type": "number"}, "opts": {"type": "object"}}, "required": ["n"]}}}
    c = tools.tool_constraint([spec], "required", parallel=False)
    assert satisfies(c, call("f", {"n": 3.25, "opts": {"a": [1, "b"], "c": None}}))
    assert not satisfies(c, call("f", {"n": 10**16}))  # beyond the decoding bound
    assert not satisfies(c, call("f", {"n": 1, "opts": {"a": {"b": {"c": 1}}}}))  # nested past one level
