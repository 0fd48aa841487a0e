"""OpenAI tool calling on an expert's /v1, on the embedded model: every call is a valid call to a listed tool.

Checked through the clients people use: the ``openai`` SDK, LangChain's ``ChatOpenAI.bind_tools`` and LangChain 1.x
``create_agent``.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"], "additionalProperties": False}}}
STATUTE = {"type": "function", "function": {
    "name": "find_statute", "description": "Look up a statute by jurisdiction and topic",
    "parameters": {"type": "object", "properties": {"jurisdiction": {"type": "string", "enum": ["EU", "US", "UK"]},
                                                    "topic": {"type": "string"},
                                                    "year": {"type": "integer", "minimum": 1900}},
                   "required": ["jurisdiction", "topic"], "additionalProperties": False}}}
TOOLS = [WEATHER, STATUTE]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION = [{"role": "user", "content": "Which EU law covers personal data, and what is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(law_expert):
    return openai.OpenAI(base_url=f"{law_expert.url}/v1", api_key="unused")


def assert_valid(name: str, arguments: str) -> dict:
    assert name in SCHEMAS
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def test_required_gives_valid_calls_and_finish_reason_tool_calls(client):
    reply = client.chat.completions.create(model="law_expert", messages=QUESTION, tools=TOOLS, tool_choice="required",
                                           max_tokens=200)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert_valid(call.function.name, call.function.arguments)


def test_a_named_function_is_exactly_that_call(client):
    reply = client.chat.completions.create(
        model="law_expert", messages=QUESTION, tools=TOOLS, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "find_statute"}})
    calls = reply.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["find_statute"]
    assert assert_valid("find_statute", calls[0].function.arguments)["jurisdiction"] in ("EU", "US", "UK")


def test_streamed_calls_arrive_as_tool_call_deltas(client):
    stream = client.chat.completions.create(model="law_expert", messages=QUESTION, tools=TOOLS,
                                            tool_choice="required", max_tokens=200, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert calls and finish == "tool_calls"
    for call in calls.values():
        assert_valid(call["name"], call["arguments"])


def test_one_call_at_most_when_parallel_calls_are_off(client):
    reply = client.chat.completions.create(model="law_expert", messages=QUESTION, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=200)
    assert len(reply.choices[0].message.tool_calls) == 1


def test_none_answers_in_words_and_a_tool_result_in_the_history_is_read(client):
    reply = client.chat.completions.create(model="law_expert", messages=QUESTION, tools=TOOLS, tool_choice="none",
                                           max_tokens=40)
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].message.content
    history = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "find_statute",
                                                              "arguments": '{"jurisdiction": "EU", "topic": "data"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Regulation (EU) 2016/679, the GDPR"},
        {"role": "tool", "tool_call_id": "call_2", "content": "18 degrees and cloudy"},
    ]
    reply = client.chat.completions.create(model="law_expert", messages=history, tools=TOOLS, max_tokens=60)
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_a_tool_choice_naming_an_unknown_tool_is_a_400(client):
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        client.chat.completions.create(model="law_expert", messages=QUESTION, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})


def test_langchain_bind_tools_gets_valid_tool_calls(law_expert):
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(base_url=f"{law_expert.url}/v1", api_key="unused", model="law_expert", max_tokens=200)
    message = model.bind_tools(TOOLS, tool_choice="required").invoke(QUESTION[0]["content"])
    assert message.tool_calls
    for call in message.tool_calls:
        assert call["name"] in SCHEMAS
        jsonschema.validate(call["args"], SCHEMAS[call["name"]])


def test_langchain_create_agent_runs_a_tool_and_answers(law_expert):
    """LangChain 1.x's agent loop against the expert: the model calls the tool, the tool's result goes back as a
    tool message, and the loop ends with the model's answer.

    A 135M model left to choose (tool_choice auto) answers in words; a middleware asks for a call on the first turn,
    as an application that needs a lookup would."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    looked_up: list[dict] = []

    @tool
    def find_statute(jurisdiction: str, topic: str) -> str:
        """Look up a statute by jurisdiction (EU, US or UK) and topic."""
        looked_up.append({"jurisdiction": jurisdiction, "topic": topic})
        return "Regulation (EU) 2016/679, the General Data Protection Regulation"

    @wrap_model_call
    def look_up_first(request, handler):
        first = not any(m.type == "tool" for m in request.messages)
        return handler(request.override(tool_choice="required") if first else request)

    model = ChatOpenAI(base_url=f"{law_expert.url}/v1", api_key="unused", model="law_expert", max_tokens=120)
    agent = create_agent(model, tools=[find_statute], middleware=[look_up_first])
    result = agent.invoke({"messages": [{"role": "user", "content": "Which EU law covers personal data?"}]})
    messages = result["messages"]
    calls = [c for m in messages if m.type == "ai" for c in m.tool_calls]
    assert calls and all(c["name"] == "find_statute" for c in calls) and len(looked_up) == len(calls)
    assert [m.type for m in messages][-2:] == ["tool", "ai"] and messages[-1].content and not messages[-1].tool_calls
