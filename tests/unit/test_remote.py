"""The remote engine: each server's dialect, detection, local checking of what comes back, and error mapping.

Servers are stood in by httpx's MockTransport answering with replies shaped as the real servers send them; the
``make e2e-servers`` tier runs the same engine against a real llama.cpp server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import openai
import pytest

from common.engine import tools
from common.engine.checking import satisfies, to_gbnf
from common.engine.dialects import DIALECTS, detect
from common.engine.remote import RemoteEngine
from common.engine.types import (
    Constraint,
    ConstraintViolated,
    EngineOverloaded,
    GenerationRequest,
    GenerationTimeout,
    InvalidConstraint,
    RequestRejected,
    UnsupportedConstraint,
)
from common.settings import AgentSettings
from tests.fakes import expert_app

SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}
CONSTRAINTS = {
    "grammar": Constraint("grammar", 'root ::= "Verdict: " ("yes" | "no")'),
    "regex": Constraint("regex", r"(yes|no)_[0-9]+"),
    "choice": Constraint("choice", ["yes", "no"]),
    "json": Constraint("json", SCHEMA),
}


# ---- request bodies, one per dialect and kind ----------------------------------------------------------------------
def fields(dialect: str, kind: str) -> dict:
    return DIALECTS[dialect].wire(CONSTRAINTS[kind], "http://server:1/v1").fields


def test_vllm_takes_every_kind_as_structured_outputs():
    for kind, c in CONSTRAINTS.items():
        assert fields("vllm", kind) == {"structured_outputs": {kind: c.value}}


def test_llamacpp_takes_gbnf_and_json_schemas():
    verdict = 'root ::= (("Verdict: " root-1))\nroot-1 ::= (("yes") | ("no"))\n'
    assert fields("llamacpp", "grammar") == {"grammar": verdict}
    assert fields("llamacpp", "choice") == {"grammar": 'root ::= (("yes") | ("no"))\n'}
    regex = fields("llamacpp", "regex")["grammar"]
    assert "_" not in regex.replace('"_"', "").replace("[", "").split("::=")[0]  # rule names: no '_' in GBNF
    assert fields("llamacpp", "json") == {"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": SCHEMA, "strict": False}}}


def test_gbnf_keeps_strings_and_classes_and_renames_rules():
    gbnf = to_gbnf(Constraint("grammar", 'root ::= my_rule "a_b"\nmy_rule ::= [a-z_]+'))
    assert "my-rule" in gbnf and '"a_b"' in gbnf and "[a-z_]" in gbnf and "my_rule" not in gbnf


def test_gbnf_writes_escapes_llamacpp_reads_and_refuses_what_it_cannot_express():
    gbnf = to_gbnf(Constraint("grammar", 'root ::= "why? 你 \\\\ \\"q\\" [x]" [^\\n]'))
    assert '"why\\x3f \\u4f60 \\\\ \\"q\\" [x]"' in gbnf and "[^\\n]" in gbnf
    with pytest.raises(InvalidConstraint):  # a 400 before anything is sent
        to_gbnf(Constraint("json", {"type": "object", "properties": {"s": {"type": "string", "pattern": "^a+$"}}}))
    with pytest.raises(InvalidConstraint):
        to_gbnf(Constraint("grammar", "root ::= ("))


def test_tgi_takes_regexes_and_json_and_a_choice_as_a_regex():
    assert fields("tgi", "regex") == {"response_format": {"type": "regex", "value": r"(yes|no)_[0-9]+"}}
    assert fields("tgi", "choice") == {"response_format": {"type": "regex", "value": "yes|no"}}
    assert fields("tgi", "json") == {"response_format": {"type": "json", "value": SCHEMA}}


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
def test_json_only_servers_take_a_choice_as_an_enum_and_give_it_back_unwrapped(dialect):
    wire = DIALECTS[dialect].wire(CONSTRAINTS["choice"], "http://server:1/v1")
    schema = wire.fields["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["choice"]["enum"] == ["yes", "no"] and wire.fields["response_format"][
        "json_schema"]["strict"] is True
    assert wire.unwrap('{"choice": "no"}') == "no"
    assert wire.unwrap("maybe") == "maybe"  # passed on to the check, which refuses it


@pytest.mark.parametrize(("dialect", "kind"), [("tgi", "grammar"), ("ollama", "grammar"), ("ollama", "regex"),
                                               ("openai", "grammar"), ("openai", "regex")])
def test_a_kind_the_server_cannot_take_is_refused_naming_server_and_constraint(dialect, kind):
    with pytest.raises(UnsupportedConstraint) as err:
        DIALECTS[dialect].wire(CONSTRAINTS[kind], "http://server:1/v1")
    assert "http://server:1/v1" in str(err.value) and kind in str(err.value)


def test_sampling_extras_only_where_the_server_knows_them():
    request = GenerationRequest(messages=[], repetition_penalty=1.2, min_new_tokens=5)
    assert DIALECTS["vllm"].sampling(request) == {"repetition_penalty": 1.2, "min_tokens": 5}
    assert DIALECTS["llamacpp"].sampling(request) == {"repeat_penalty": 1.2}
    assert DIALECTS["openai"].sampling(request) == {}  # OpenAI refuses fields it does not know


# ---- detection --------------------------------------------------------------------------------------------------
def test_dialect_from_the_model_owner_then_from_each_servers_own_path():
    nothing = {}.get
    assert detect("http://h/v1", [{"id": "m", "owned_by": "llamacpp"}], nothing).name == "llamacpp"
    assert detect("http://h/v1", [{"id": "m", "owned_by": "vllm"}], nothing).name == "vllm"
    assert detect("http://h/v1", [{"id": "m", "owned_by": "conclave"}], nothing).name == "vllm"
    replies = {"http://h/api/version": {"version": "0.12.0"}}
    assert detect("http://h/v1", [{"id": "m", "owned_by": "someone"}], replies.get).name == "ollama"
    replies = {"http://h/info": {"model_id": "m", "router": "text-generation-router", "version": "3.3"}}
    assert detect("http://h/v1", [], replies.get).name == "tgi"
    replies = {"http://h/props": {"default_generation_settings": {}, "build_info": "b1"}}
    assert detect("http://h/v1/", [], replies.get).name == "llamacpp"
    assert detect("http://h/v1", [], nothing).name == "openai"  # unknown: only what every server takes


# ---- local checking ---------------------------------------------------------------------------------------------
def test_finished_text_is_checked_against_each_kind():
    assert satisfies(CONSTRAINTS["grammar"], "Verdict: yes") and not satisfies(CONSTRAINTS["grammar"], "Verdict: ok")
    assert satisfies(CONSTRAINTS["regex"], "no_42") and not satisfies(CONSTRAINTS["regex"], "no_42 and more")
    assert satisfies(CONSTRAINTS["choice"], "yes") and not satisfies(CONSTRAINTS["choice"], "Yes, it is.")
    assert satisfies(CONSTRAINTS["json"], '{"answer": "no"}')
    assert not satisfies(CONSTRAINTS["json"], '{"answer": "maybe"}') and not satisfies(CONSTRAINTS["json"], "{")
    # JSON keys in another order than the schema's are still valid JSON for it
    two = Constraint("json", {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
                              "required": ["a", "b"]})
    assert satisfies(two, '{"b": "x", "a": 1}')


# ---- the engine against recorded replies ----------------------------------------------------------------------------
MODELS = {"object": "list", "data": [{"id": "smollm2", "object": "model", "owned_by": "llamacpp"}]}


def completion(text: str) -> dict:
    return {"id": "c1", "object": "chat.completion", "created": 1, "model": "smollm2",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}


def server(replies: list, seen: list) -> httpx.MockTransport:
    """Answers /models, then each chat completion with the next reply (a dict, an httpx.Response, or an error)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json=MODELS)
        seen.append(json.loads(request.content))
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply if isinstance(reply, httpx.Response) else httpx.Response(200, json=reply)

    return httpx.MockTransport(handle)


def engine(replies: list, seen: list, dialect: str = "auto") -> RemoteEngine:
    client = openai.OpenAI(base_url="http://llama:8080/v1", api_key="k", max_retries=0,
                           http_client=httpx.Client(transport=server(replies, seen)))
    return RemoteEngine("http://llama:8080/v1", dialect=dialect, client=client)


def ask(e: RemoteEngine, constraint: Constraint | None = None):
    return e.submit(GenerationRequest(messages=[{"role": "user", "content": "Binding?"}], max_new_tokens=8,
                                      constraint=constraint)).result()


def test_an_answer_that_keeps_the_constraint_passes_with_the_servers_usage():
    seen: list = []
    result = ask(engine([completion("yes")], seen), CONSTRAINTS["choice"])
    assert result.text == "yes" and (result.prompt_tokens, result.completion_tokens) == (12, 3)
    assert seen[0]["grammar"] == 'root ::= (("yes") | ("no"))\n' and "stream" not in seen[0]


def test_a_violation_is_asked_again_once_then_refused_with_a_502_naming_the_server():
    seen: list = []
    assert ask(engine([completion("A contract is not binding"), completion("no")], seen),
               CONSTRAINTS["choice"]).text == "no"
    assert len(seen) == 2
    seen = []
    with pytest.raises(ConstraintViolated) as err:
        ask(engine([completion("A contract"), completion("In legal terms")], seen), CONSTRAINTS["choice"])
    assert len(seen) == 2 and "llama.cpp server at http://llama:8080/v1" in str(err.value) and "choice" in str(
        err.value)


def test_a_json_only_server_answers_a_choice_through_an_enum():
    seen: list = []
    result = ask(engine([completion('{"choice": "no"}')], seen, dialect="openai"), CONSTRAINTS["choice"])
    assert result.text == "no" and seen[0]["response_format"]["type"] == "json_schema"


def test_server_errors_map_to_the_engines():
    rate = httpx.Response(429, json={"error": {"message": "slow down"}}, headers={"Retry-After": "7"})
    with pytest.raises(EngineOverloaded) as err:
        ask(engine([rate], []))
    assert err.value.retry_after == 7
    with pytest.raises(RequestRejected):
        ask(engine([httpx.Response(400, json={"error": {"message": "bad grammar"}})], []), CONSTRAINTS["grammar"])
    with pytest.raises(GenerationTimeout):
        ask(engine([httpx.ReadTimeout("slow")], []), CONSTRAINTS["json"])
    with pytest.raises(UnsupportedConstraint):  # refused before anything is sent
        engine([], [], dialect="openai").submit(GenerationRequest(messages=[], constraint=CONSTRAINTS["grammar"]))


def test_an_unconstrained_answer_streams_with_usage():
    chunks = [{"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
              for piece in (" A contract", " needs", " consent.")]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
    sse = "".join(f"data: {json.dumps({'id': 'c', 'object': 'chat.completion.chunk', 'created': 1, 'model': 'm', **c})}"
                  "\n\n" for c in chunks) + "data: [DONE]\n\n"
    seen: list = []
    result = ask(engine([httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})], seen))
    assert result.text == "A contract needs consent." and (result.prompt_tokens, result.completion_tokens) == (9, 3)
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}


def test_readiness_is_cached_not_asked_on_every_request():
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json=MODELS)

    client = openai.OpenAI(base_url="http://llama:8080/v1", api_key="k", max_retries=0,
                           http_client=httpx.Client(transport=httpx.MockTransport(handle)))
    e = RemoteEngine("http://llama:8080/v1", client=client)
    assert all(e.ready for _ in range(20)) and calls == ["/v1/models"]
    assert e.runtime == {"remote": "http://llama:8080/v1", "dialect": "llamacpp"}


def test_an_expert_on_a_server_that_breaks_constraints_answers_502_never_a_200(tmp_path):
    seen: list = []
    remote = engine([completion("A contract is not binding without a signature."), completion("In legal terms")],
                    seen)
    app = expert_app(AgentSettings(persona="law_expert", data_dir=tmp_path), engine=remote)
    resp = app.test_client().post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Binding?"}], "structured_outputs": {"choice": ["yes", "no"]}})
    assert resp.status_code == 502, resp.get_json()
    assert "llama.cpp server" in resp.get_json()["error"]["message"]


def test_tools_on_a_server_that_cannot_constrain_calls_are_a_400_naming_it(tmp_path):
    app = expert_app(AgentSettings(persona="law_expert", data_dir=tmp_path), engine=engine([], [], dialect="ollama"))
    resp = app.test_client().post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Binding?"}], "tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object"}}}], "tool_choice": "required"})
    assert resp.status_code == 400
    assert "Ollama server at http://llama:8080/v1" in resp.get_json()["error"]["message"]


def test_llamacpp_gets_tool_calls_as_gbnf_that_admits_only_valid_calls():
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city"]}}}
    required = tools.tool_constraint([weather], "required", parallel=True)
    gbnf = DIALECTS["llamacpp"].wire(required, "http://h/v1").fields["grammar"]
    assert gbnf.startswith("root ::= (call0) (") and "(=" not in gbnf and "-1}" not in gbnf and "\\0" not in gbnf
    assert not re.search(r"^[a-z0-9-]*_[a-z0-9_-]* ::=", gbnf, re.MULTILINE)  # GBNF rule names take no '_'
    # The same grammar, its rule names read back as EBNF, admits a valid call and refuses an invalid one
    ebnf = Constraint("grammar", re.sub(r"\bcall[0-9][A-Za-z0-9-]*", lambda m: m.group().replace("-", "_"), gbnf))
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
    assert satisfies(ebnf, call) and satisfies(ebnf, call + "\n" + call)
    assert not satisfies(ebnf, call.replace('"days": 2', '"days": 0'))
    auto = tools.tool_constraint([weather], "auto", parallel=True)
    assert DIALECTS["llamacpp"].wire(auto, "http://h/v1").fields == {}  # asked free, checked afterwards


# vLLM's chat completion parameters as its docs list them (OpenAI's, then vLLM's "extra parameters"); a body with any
# other key is one vLLM would refuse or ignore
VLLM_CHAT_PARAMETERS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
    "stream_options", "n", "seed", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs",
    "response_format", "tools", "tool_choice", "user", "best_of", "use_beam_search", "top_k", "min_p",
    "repetition_penalty", "length_penalty", "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens", "prompt_logprobs",
    "structured_outputs", "echo", "add_generation_prompt", "continue_final_message", "add_special_tokens",
    "chat_template", "chat_template_kwargs", "priority", "request_id", "cache_salt"}
VLLM_STRUCTURED_OUTPUTS = {"json", "regex", "choice", "grammar", "structural_tag", "json_object"}


def test_a_persona_with_its_own_lora_adapter_asks_the_shared_vllm_server_for_it(tmp_path):
    """Personas that differ by prompt share REMOTE_MODEL; one whose catalog entry names ``remote_model`` (its
    fine-tune, served by vLLM's --lora-modules on the same base) asks for that, in bodies vLLM's API takes."""
    import yaml

    from agents.app import create_app
    from common.settings import AgentSettings
    from tests.fakes import WordsEmbedder

    catalog = yaml.safe_load((Path(__file__).resolve().parents[2] / "agents" / "personas.yaml").read_text())
    for entry in catalog.values():
        entry["knowledge"] = []
    catalog["law_expert"]["remote_model"] = "law-lora"
    (tmp_path / "personas.yaml").write_text(yaml.safe_dump(catalog))
    engines = {}
    for persona in ("law_expert", "ai_expert"):
        settings = AgentSettings(persona=persona, personas_file=tmp_path / "personas.yaml", data_dir=tmp_path / persona,
                                 remote_url="http://127.0.0.1:9/v1", remote_model="panel-model", remote_dialect="vllm")
        engines[persona] = create_app(settings, embedder=WordsEmbedder).extensions["engine"]
    assert engines["law_expert"].model_name == "law-lora" and engines["ai_expert"].model_name == "panel-model"
    request = GenerationRequest(messages=[{"role": "user", "content": "Binding?"}], max_new_tokens=8, stop=["\n\n"],
                                repetition_penalty=1.2, constraint=CONSTRAINTS["json"])
    kwargs, _ = engines["law_expert"].body(request)
    body = {k: v for k, v in kwargs.items() if k != "extra_body"} | kwargs.get("extra_body", {})
    assert body["model"] == "law-lora" and set(body) <= VLLM_CHAT_PARAMETERS, set(body) - VLLM_CHAT_PARAMETERS
    assert set(body["structured_outputs"]) <= VLLM_STRUCTURED_OUTPUTS
    for engine in engines.values():
        engine.stop()
