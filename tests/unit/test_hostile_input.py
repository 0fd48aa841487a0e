"""Hostile and random input against both services' HTTP layers: never a 5xx, always the documented error shape."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.settings import AgentSettings, OrchestratorSettings
from orchestrator.app import create_app as create_orchestrator
from orchestrator.routing import Router
from tests.fakes import FakeEngine, KeywordEmbedder, ScriptedEngine, expert_app

LIMIT = 300
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
chat_bodies = st.fixed_dictionaries({}, optional={
    "intent": st.text(max_size=200) | json_values,
    "max_new_tokens": st.integers(min_value=-10, max_value=10**30) | json_values,
    "min_new_tokens": st.integers(min_value=-10, max_value=10**6),
    "temperature": st.floats(allow_nan=True, allow_infinity=True),
    "top_p": st.floats(allow_nan=True, allow_infinity=True),
    "stop": st.lists(st.text(max_size=5), max_size=10) | json_values,
    "session_id": st.text(max_size=140),
    "stream": st.booleans(),
    "max_history_length": st.integers(min_value=-5, max_value=50),
})
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    engine = FakeEngine()
    app = expert_app(AgentSettings(persona="law_expert", data_dir=tmp_path_factory.mktemp("h"),
                                      max_new_tokens_limit=LIMIT), engine)
    return app.test_client(), engine


def orchestrator_client(tmp_path, **settings):
    """An orchestrator on fakes whose one expert is unreachable: its HTTP layer is what these tests exercise."""
    return create_orchestrator(
        OrchestratorSettings(expert_urls="http://127.0.0.1:9", data_dir=tmp_path, retries=0, **settings),
        llm=ScriptedEngine([]), router_factory=lambda: Router(KeywordEmbedder()),
        judge_factory=KeywordEmbedder).test_client()


def assert_error_shape(resp):
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}
    assert "Traceback" not in body["error"]["message"]


@FAST
@given(body=chat_bodies)
def test_random_chat_bodies_get_200_or_a_clean_400(expert, body):
    client, engine = expert
    resp = client.post("/chat", data=json.dumps(body, allow_nan=True), content_type="application/json")
    assert resp.status_code in (200, 400), resp.get_data(as_text=True)
    if resp.status_code == 400:
        assert_error_shape(resp)
    else:
        assert engine.requests[-1].max_new_tokens <= LIMIT  # clamped, whatever was asked
        assert 0 <= engine.requests[-1].temperature <= 2 and 0 < engine.requests[-1].top_p <= 1


@FAST
@given(raw=st.binary(max_size=300))
def test_random_bytes_are_a_clean_400(expert, raw):
    client, _ = expert
    resp = client.post("/chat", data=raw, content_type="application/json")
    assert resp.status_code == 400
    assert_error_shape(resp)


@pytest.mark.parametrize("raw", [
    b'{"intent": "x", "max_new_tokens": 1' + b"0" * 5000 + b"}",  # a 5000-digit number
    b'{"intent": "x", "temperature": 1e999}',
    b'{"intent": "x", "temperature": NaN}',
    b'{"a":' * 5000 + b"1" + b"}" * 5000,  # nested far past the parser's recursion limit
    b'{"intent": "\xed\xa0\x80"}',  # a lone surrogate in UTF-8: invalid
])
def test_pathological_bodies(expert, raw):
    client, _ = expert
    resp = client.post("/chat", data=raw, content_type="application/json")
    assert resp.status_code == 400
    assert_error_shape(resp)


@FAST
@given(body=st.fixed_dictionaries({}, optional={
    "task": st.text(max_size=100) | json_values,
    "strategy": st.sampled_from(["react", "panel", "vote", ""]) | json_values,
    "max_steps": st.integers(min_value=-3, max_value=10**20) | json_values,
    "experts": st.lists(st.text(max_size=10), max_size=3) | json_values,
}))
def test_random_integrate_bodies_never_5xx(tmp_path_factory, body):
    client = orchestrator_client(tmp_path_factory.mktemp("o"))
    resp = client.post("/integrate", data=json.dumps(body), content_type="application/json")
    assert resp.status_code in (400, 503), resp.get_data(as_text=True)  # no expert is up: 503 once input is valid
    assert_error_shape(resp)


def test_openapi_documents_every_route_with_the_error_shape(expert):
    client, _ = expert
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1") and "/chat" in doc["paths"]
    chat = doc["paths"]["/chat"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatRequest")
    assert chat["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert {"ChatRequest", "ChatResponse", "ErrorResponse", "AgentCard"} <= set(doc["components"]["schemas"])


def test_a_host_name_the_service_does_not_answer_to_is_a_400_on_every_route(expert):
    client, _ = expert
    assert client.get("/health", headers={"Host": "localhost:5001"}).status_code == 200
    assert client.get("/health", headers={"Host": "127.0.0.1:5001"}).status_code == 200
    for path in ("/health", "/v1/models", "/a2a/", "/.well-known/agent-card.json"):
        resp = client.get(path, headers={"Host": "attacker.example:5001"})  # a page that rebound its name to us
        assert resp.status_code == 400, path


def test_configured_hosts_and_the_public_url_are_answered(tmp_path):
    s = AgentSettings(persona="law_expert", data_dir=tmp_path, allowed_hosts="law-expert, .corp.example",
                      public_url="https://panel.example.org/law")
    client = expert_app(s, FakeEngine()).test_client()
    for host in ("law-expert:5001", "a.corp.example", "panel.example.org"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host
    assert client.get("/health", headers={"Host": "localhost"}).status_code == 400
    assert AgentSettings(host="0.0.0.0", api_key="k").trusted_hosts() is None  # on a network the key guards it


@pytest.mark.parametrize("module", ["agents", "orchestrator"])
def test_a_service_open_to_the_network_without_a_key_refuses_to_start(module, tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "API_KEY": ""}
    run = subprocess.run([sys.executable, "-m", module, "--host", "0.0.0.0", "--port", "1"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert run.returncode != 0 and "refusing to listen on 0.0.0.0 without an API key" in run.stderr
    assert "API_KEY=" in run.stderr and "ALLOW_NO_API_KEY=1" in run.stderr and "Traceback" not in run.stderr
    assert AgentSettings(host="0.0.0.0", allow_no_api_key=True).exposure_problem() is None
    assert AgentSettings(host="::1").exposure_problem() is None


def test_admission_refuses_past_its_limit_at_once_and_never_counts_probes():
    from common.web import Admission

    calls = []

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return iter([b"streaming..."])

    admission = Admission(app, limit=2)
    statuses = []

    def get(path):
        return admission({"PATH_INFO": path}, lambda status, headers: statuses.append((status, dict(headers))))

    held = [get("/chat"), get("/v1/chat/completions")]  # two bodies still streaming
    refused = get("/integrate")
    assert statuses[-1][0].startswith("429") and statuses[-1][1]["Retry-After"] == "2"
    assert json.loads(b"".join(refused))["error"]["code"] == "too_many_requests"
    for probe in ("/health", "/ready", "/metrics"):
        get(probe)
        assert statuses[-1][0] == "200 OK"
    held[0].close()  # a body closed: its place is free again
    get("/chat")
    assert statuses[-1][0] == "200 OK" and "/integrate" not in calls


@pytest.mark.parametrize("service", ["expert", "orchestrator"])
def test_every_route_in_the_url_map_is_in_the_openapi_document(service, expert, tmp_path):
    import re

    if service == "expert":
        client = expert[0]
    else:
        client = orchestrator_client(tmp_path)
    app = client.application
    documented = {(path, method) for path, ops in client.get("/openapi.json").get_json()["paths"].items()
                  for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule.startswith("/static"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, (service, method, path)


@pytest.mark.parametrize("service", ["expert", "orchestrator"])
def test_pages_run_only_their_own_files_under_a_strict_policy(service, expert, tmp_path):
    """No inline script or handler on either page (a strict CSP would block it, and an injected one with it), every
    script they load is served from here, and every response carries the policy and nosniff."""
    import re

    if service == "expert":
        client = expert[0]
    else:
        client = orchestrator_client(tmp_path)
    page = client.get("/")
    html = page.get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline <script>"
    assert not re.search(r"\son[a-z]+\s*=", html), "an inline event handler"
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert {"/static/vendor/marked.umd.js", "/static/vendor/purify.min.js", "/static/conclave.js"} <= set(scripts)
    for src in scripts:
        assert client.get(src).status_code == 200, src
        assert "innerHTML" not in client.get(src).get_data(as_text=True) or "vendor" in src, src
    for resp in (page, client.get("/health"), client.get("/no-such-route")):
        policy = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("service", ["expert", "orchestrator"])
def test_without_the_key_every_route_but_the_open_ones_is_a_401(service, tmp_path):
    """Every rule in the URL map, each method, with its path parameters filled in, and the mounted A2A and MCP
    endpoints: 401 without the key; only /health, the page and its static files are open."""
    import re

    if service == "expert":
        client = expert_app(AgentSettings(persona="law_expert", data_dir=tmp_path, api_key="k"), FakeEngine()
                            ).test_client()
    else:
        client = orchestrator_client(tmp_path, api_key="k")
    open_paths = {"/health", "/"}
    checked = 0
    for rule in client.application.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?[^>]+>", "x", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            resp = client.open(path, method=method, json={})
            if path in open_paths or path.startswith("/static"):
                assert resp.status_code != 401, (method, path)
            else:
                assert resp.status_code == 401, (method, path, resp.status_code)
                assert_error_shape(resp)
                checked += 1
    for mounted in ("/a2a", "/mcp") if service == "orchestrator" else ("/a2a",):
        assert client.post(mounted, json={"jsonrpc": "2.0", "id": 1, "method": "x"}).status_code == 401, mounted
    assert checked >= 8


def _routes(client) -> list[tuple[str, str]]:
    """(method, rule) for every rule of the app's URL map, with the mounted A2A/MCP endpoints."""
    rules = client.application.url_map.iter_rules()
    found = [(m, r.rule) for r in rules for m in sorted(r.methods - {"HEAD", "OPTIONS"})]
    mounted = ["/a2a", "/mcp"] if "orchestrator" in client.application.extensions else ["/a2a"]
    return found + [("POST", path) for path in mounted]


@pytest.fixture(scope="module")
def both_services(tmp_path_factory):
    expert_client = expert_app(AgentSettings(persona="law_expert", data_dir=tmp_path_factory.mktemp("fx"),
                                             api_key="k"), FakeEngine()).test_client()
    return {"expert": expert_client, "orchestrator": orchestrator_client(tmp_path_factory.mktemp("fo"), api_key="k")}


@FAST
@given(data=st.data())
def test_every_route_fuzzed_answers_in_the_error_shape_and_fast(both_services, data):
    """Any route of either service (its URL map, path parameters filled with random text), any method it takes,
    random JSON or bytes and query strings, with the key: never a server error, always within 2 s, and every error
    in the one shape."""
    import re
    import time

    service = data.draw(st.sampled_from(sorted(both_services)))
    client = both_services[service]
    method, rule = data.draw(st.sampled_from(_routes(client)))
    path = re.sub(r"<(?:[^:>]+:)?[^>]+>", lambda _: data.draw(st.text(
        st.characters(codec="utf-8", exclude_characters="/?#"), min_size=1, max_size=20)), rule)
    query = data.draw(st.dictionaries(st.sampled_from(["limit", "stream", "x", "session_id"]),
                                      st.text(max_size=10), max_size=2))
    body = data.draw(json_values | st.binary(max_size=100).map(lambda b: b.decode("latin-1")))
    started = time.perf_counter()
    resp = client.open(path, method=method, query_string=query, data=json.dumps(body),
                       content_type="application/json", headers={"Authorization": "Bearer k"})
    # no server error; a 503 (the orchestrator's one expert is unreachable here) is an answer, with its Retry-After
    assert resp.status_code < 500 or (resp.status_code == 503 and resp.headers.get("Retry-After")), (
        method, path, resp.status_code, resp.get_data(as_text=True)[:300])
    assert time.perf_counter() - started < 2, (method, path)
    if resp.status_code >= 400 and resp.mimetype == "application/json" and rule not in ("/a2a", "/mcp"):
        error = resp.get_json()["error"]
        assert set(error) == {"message", "type", "code"} and "Traceback" not in error["message"]
