"""Interop proven by checks nobody here wrote: the MCP conformance suite and the MCP inspector's CLI against the
orchestrator's /mcp; @a2a-js/sdk's client (TypeScript's A2A SDK) against an expert and the orchestrator; the A2A TCK
when A2A_TCK_DIR points at a checkout of it; the experts' /v1 against OpenAI's published OpenAPI document when
OPENAI_OPENAPI points at its openapi.yaml. Findings are fixed in the services, with regressions in make test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from itertools import pairwise
from pathlib import Path

import pytest
import requests
import yaml
from jsonschema import Draft202012Validator, validators
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conformance.conftest import CACHE, HERE

pytestmark = pytest.mark.conformance

QUESTION = "What does the GDPR say about breach notification deadlines?"


def run(cmd: list[str], env: dict, cwd: Path = CACHE, timeout: float = 1800) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(done.stdout[-6000:], done.stderr[-3000:], sep="\n")
    return done


def test_mcp_conformance_suite(node_env, stack, tmp_path):
    """Every server scenario of @modelcontextprotocol/conformance passes except those in the baseline, each listed
    there with the specification's reason it does not apply; the suite itself fails on a stale baseline entry."""
    done = run(["conformance", "server", "--url", f"{stack['orchestrator'].url}/mcp",
                "--expected-failures", str(HERE / "mcp-expected-failures.yaml"), "-o", str(tmp_path)], node_env)
    assert done.returncode == 0, "unexpected failures (or stale baseline entries) above"
    checks = [json.loads(p.read_text()) for p in tmp_path.glob("*/checks.json")]
    passed = sum(all(c["status"] in ("SUCCESS", "INFO") for c in scenario) for scenario in checks)
    baseline = yaml.safe_load((HERE / "mcp-expected-failures.yaml").read_text())["server"]
    print(f"MCP conformance: {len(checks)} scenarios, {passed} passed, {len(baseline)} not applicable")
    assert passed == len(checks) - len(baseline) > 0


def test_mcp_inspector_cli_lists_and_calls_the_panel(node_env, stack):
    inspector = CACHE / "node_modules" / "@modelcontextprotocol" / "inspector-cli" / "build"
    url = f"{stack['orchestrator'].url}/mcp"
    # run from its build folder: the CLI finds its own package.json by a path relative to the working directory
    listed = run(["node", "index.js", url, "--method", "tools/list"], node_env, cwd=inspector)
    assert listed.returncode == 0
    assert {"consult_panel", "ask_law_expert"} <= {t["name"] for t in json.loads(listed.stdout)["tools"]}
    called = run(["node", "index.js", url, "--method", "tools/call", "--tool-name", "consult_panel",
                  "--tool-arg", "task=What is the maximum fine under the GDPR?"], node_env, cwd=inspector)
    result = json.loads(called.stdout)
    text = result["content"][0]["text"]
    assert not result.get("isError") and "20 million" in text and "law_expert" in text and "Sources:" in text
    unknown = run(["node", "index.js", url, "--method", "tools/call", "--tool-name", "no_such_tool"], node_env,
                  cwd=inspector)
    assert unknown.returncode != 0 and "Unknown tool: no_such_tool" in unknown.stdout + unknown.stderr


def test_mcp_progress_from_the_typescript_sdk(node_env, stack):
    """The suite's progress scenario calls its reference server's fixture tool; the same check on consult_panel, from
    TypeScript's MCP SDK: a notification as the expert is asked and as it answers, each value higher than the last
    (the spec's MUST), then the answer."""
    done = run(["node", "mcp_progress.mjs", f"{stack['orchestrator'].url}/mcp",
                "What is the maximum fine under the GDPR?"], node_env, timeout=900)
    assert done.returncode == 0
    report = json.loads(done.stdout.strip().splitlines()[-1])
    steps = [p["progress"] for p in report["progress"]]
    messages = [p.get("message", "") for p in report["progress"]]
    assert len(steps) >= 2 and all(a < b for a, b in pairwise(steps)), report["progress"]  # MUST increase
    assert messages[0].startswith("asking law_expert") and "law_expert answered" in messages
    text = report["result"]["content"][0]["text"]
    assert not report["result"].get("isError") and "20 million" in text and "Sources:" in text


@pytest.mark.parametrize("service", ["law_expert", "orchestrator"])
def test_a2a_from_the_typescript_sdk(node_env, stack, service):
    """Card, blocking and streamed sends, GetTask, a continued context, CancelTask, and TaskNotFound, through
    @a2a-js/sdk's client; the answers are judged by their text, not only their shape."""
    url = stack[service].url
    done = run(["node", "a2a_client.mjs", url, QUESTION, "Who else must be told?"], node_env, timeout=900)
    assert done.returncode == 0
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert ["JSONRPC", "1.0", f"{url}/a2a"] in report["card"]["interfaces"] and report["card"]["streaming"]
    blocking, streamed = report["blocking"], report["streamed"]
    assert blocking["state"] == "TASK_STATE_COMPLETED" and "72 hours" in blocking["answer"]
    assert streamed["kinds"][0] == "task" and "artifactUpdate" in streamed["kinds"]
    assert streamed["final"] == "TASK_STATE_COMPLETED" and "72 hours" in streamed["answer"]
    assert report["got"]["id"] == blocking["id"] and report["got"]["answer"] == blocking["answer"]
    continued = report["continued"]
    assert continued["contextId"] == blocking["contextId"] and continued["id"] != blocking["id"]
    assert continued["state"] == "TASK_STATE_COMPLETED" and continued["answer"]
    if service == "law_expert":  # an expert's context is its session: both turns, question and answer, are in it
        turns = requests.get(f"{url}/sessions/{blocking['contextId'][:128]}", timeout=10).json()["turns"]
        assert [t["content"] for t in turns[::2]] == [QUESTION, "Who else must be told?"]
    else:  # the orchestrator streams each consultation as a status update
        assert any("law_expert" in s for s in streamed["statuses"]), streamed["statuses"]
    assert report["cancel"]["canceled"] == report["cancel"]["after"] == "TASK_STATE_CANCELED"
    assert report["missing"] == "JsonRpcTaskNotFoundError"


# What the TCK asks of its own scenario agent, not of A2A: these requirements are tested through messages whose id
# prefix (tck-input-required, tck-message-response...) selects a behaviour of the TCK's reference SUT. A product
# agent that answers every message and completes the task (which A2A allows: INPUT_REQUIRED and replying with a
# Message instead of a Task are an agent's choice, spec 3.1.1 and 4.1.3) cannot take them.
TCK_SCENARIO_ONLY = ("Expected task state 'TASK_STATE_INPUT_REQUIRED'", "Expected a Message response",
                     "Expected text 'Generated text content'", "Expected file part", "Expected file URL part",
                     "Expected part type 'data'", "Expected data {", "Expected filename 'output.txt'",
                     "Expected mediaType 'text/plain'")
# The TCK reads the card without an A2A-Version header, which the spec reads as a 0.3 client's, so it gets 0.3's
# fields beside 1.0's; its card schema then rejects them, where the spec says implementations SHOULD ignore
# unrecognized fields (5.7, Unrecognized Fields). Asked with A2A-Version 1.0, the card has none (a unit test).
ZERO_THREE_CARD_FIELDS = "'preferredTransport', 'protocolVersion', 'url' do not match any of the regexes"


@pytest.mark.parametrize("service", ["law_expert", "orchestrator"])
def test_a2a_tck(stack, service, tmp_path):
    """The a2aproject TCK (its A2A 1.0 branch, 1.0-dev) over JSON-RPC: every MUST requirement passes unless it
    needs the TCK's scenario agent (above); the counts per level are printed for the closing note and README."""
    tck = os.environ.get("A2A_TCK_DIR")
    if not tck:
        pytest.skip("A2A_TCK_DIR is not set (a checkout of github.com/a2aproject/a2a-tck, branch 1.0-dev)")
    venv = CACHE / "a2a-tck-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", tck], check=True)
    reports = Path(tck) / "reports"
    shutil.rmtree(reports, ignore_errors=True)
    run([str(python), "run_tck.py", "--sut-host", stack[service].url, "--transport", "jsonrpc"], dict(os.environ),
        cwd=Path(tck), timeout=3600)
    report = json.loads((reports / "compatibility.json").read_text())
    shutil.copy(reports / "compatibility.json", tmp_path / f"tck-{service}.json")
    levels: dict[str, dict[str, int]] = {}
    for requirement in report["per_requirement"].values():
        counts = levels.setdefault(requirement["level"], {})
        counts[requirement["status"]] = counts.get(requirement["status"], 0) + 1
    print(f"A2A TCK against {service}: {json.dumps(levels)}")
    failed = {rid: r["errors"] for rid, r in report["per_requirement"].items()
              if r["level"] == "MUST" and r["status"] == "FAIL"
              and not all(any(marker in error for marker in (*TCK_SCENARIO_ONLY, ZERO_THREE_CARD_FIELDS))
                          for error in r["errors"])}
    assert not failed, json.dumps(failed, indent=1)
    # JSONRPC-SVC-002 (the A2A-Extensions header is accepted) posts a blocking SendMessage with httpx's default 5 s
    # timeout, shorter than an answer decoded on 2 CPU cores takes, so the TCK records no verdict: the same request,
    # given the time an answer takes, must complete
    extensions = requests.post(f"{stack[service].url}/a2a", timeout=300, headers={
        "A2A-Version": "1.0", "A2A-Extensions": "https://example.com/ext/v1,https://example.com/ext/v2"}, json={
        "jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {
            "role": "ROLE_USER", "parts": [{"text": "What is a contract?"}], "messageId": uuid.uuid4().hex}}})
    assert extensions.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"


def _allowing_nullable(check):
    """OpenAI's document says OpenAPI 3.1 but marks many fields with 3.0's ``nullable: true`` (JSON Schema 2020-12
    has no such keyword): its meaning, null allowed, is added to ``type`` and ``enum``."""
    def checked(validator, value, instance, schema):
        if instance is None and schema.get("nullable"):
            return
        yield from check(validator, value, instance, schema)
    return checked


OpenAPIValidator = validators.extend(Draft202012Validator, {
    keyword: _allowing_nullable(Draft202012Validator.VALIDATORS[keyword]) for keyword in ("type", "enum")})


def test_the_experts_v1_against_openais_published_schema(stack):
    """/v1/models, a chat completion, its stream (usage included), and tool calls (whole and streamed), validated
    against OpenAI's OpenAPI document (github.com/openai/openai-openapi, openapi.yaml) with jsonschema."""
    path = os.environ.get("OPENAI_OPENAPI")
    if not path:
        pytest.skip("OPENAI_OPENAPI is not set (the openapi.yaml of a checkout of github.com/openai/openai-openapi)")
    spec = yaml.load(Path(path).read_text(), Loader=yaml.CSafeLoader)
    registry = Registry().with_resource("urn:openai", Resource(contents=spec, specification=DRAFT202012))

    def problems(body: dict, schema: str) -> list[str]:
        validator = OpenAPIValidator({"$ref": f"urn:openai#/components/schemas/{schema}"}, registry=registry)
        return [f"{schema} {list(e.path)}: {e.message[:200]}" for e in validator.iter_errors(body)]

    url = f"{stack['law_expert'].url}/v1"
    weather = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                 "parameters": {"type": "object", "required": ["city"],
                                                                "properties": {"city": {"type": "string"}}}}}]
    asks = {"text": {"messages": [{"role": "user", "content": "What is a contract?"}], "max_tokens": 32},
            "tools": {"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": weather,
                      "tool_choice": "required", "max_tokens": 48}}
    found = problems(requests.get(f"{url}/models", timeout=30).json(), "ListModelsResponse")
    for name, ask in asks.items():
        whole = requests.post(f"{url}/chat/completions", json={"model": "law_expert", **ask}, timeout=300).json()
        found += problems(whole, "CreateChatCompletionResponse")
        if name == "tools":  # a real call, so the tool call shapes are checked too
            assert whole["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        streamed = requests.post(f"{url}/chat/completions", timeout=300, json={
            "model": "law_expert", "stream": True, "stream_options": {"include_usage": True}, **ask})
        chunks = [json.loads(line[len("data: "):]) for line in streamed.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert chunks and chunks[-1]["usage"]["completion_tokens"] > 0
        for chunk in chunks:
            found += problems(chunk, "CreateChatCompletionStreamResponse")
    assert not found, "\n".join(found)
