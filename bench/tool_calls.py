"""Tool calling on the Berkeley Function Calling Leaderboard (``bfcl-eval`` ships the data and the AST checker).

Categories ``simple_python`` and ``multiple``, each case asked through the OpenAI tools API with ``tool_choice:
required`` (every case in these categories expects exactly one call), side by side, case by case:

- ``expert``: our expert's /v1 on the embedded model (local engine, calls decoded under a structural tag);
- ``llama-server``: llama.cpp's server with the same GGUF and ``--jinja``, asked the same request;
- ``expert on llama-server``: our expert with REMOTE_URL pointing at that server (calls sent as GBNF).

Reported per target: the share of answers that are valid calls (a listed function, arguments matching its schema)
and BFCL's AST accuracy. ``python -m bench.tool_calls [N]`` runs N cases per category (``make bench``: 60; 0 = all).
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import jsonschema
import requests

from bench.peers import llama_server
from harness.services import Service, expert

CATEGORIES = ("simple_python", "multiple")
DEFAULT_CASES = 60
CONCURRENCY = 4


class _AnyModel(dict):
    """Every model name: function names had '.' turned into '_' (the OpenAI tools API takes no '.')."""

    def __missing__(self, key):
        return types.SimpleNamespace(underscore_to_dot=True)


def _bfcl():
    """bfcl-eval's checker and schema conversion. Its model registry imports every provider's SDK (anthropic,
    cohere, ...) only to ask whether a model name had '.' in function names turned into '_'; for the OpenAI tools API
    it did, so a registry that says so for every model stands in for it."""
    registry = types.ModuleType("bfcl_eval.constants.model_config")
    registry.MODEL_CONFIG_MAPPING = _AnyModel()
    sys.modules.setdefault("bfcl_eval.constants.model_config", registry)
    from bfcl_eval.constants.enums import Language, ModelStyle
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.model_handler.utils import convert_to_tool

    def tools(functions: list[dict]) -> list[dict]:
        return convert_to_tool(functions, GORILLA_TO_OPENAPI, ModelStyle.OPENAI_COMPLETIONS)

    def check(functions, output, ground_truth, category) -> bool:
        return ast_checker(functions, output, ground_truth, Language.PYTHON, category, "openai_tools")["valid"]

    return tools, check


def cases(category: str, limit: int) -> list[dict]:
    data = files("bfcl_eval") / "data"
    questions = [json.loads(line) for line in (data / f"BFCL_v4_{category}.json").read_text().splitlines()]
    answers = {a["id"]: a for a in map(json.loads, (data / "possible_answer" / f"BFCL_v4_{category}.json")
                                       .read_text().splitlines())}
    step = max(1, len(questions) // limit) if limit else 1
    chosen = questions[::step][:limit] if limit else questions
    return [{**q, "ground_truth": answers[q["id"]]["ground_truth"], "category": category} for q in chosen]


def ask(base_url: str, case: dict, tools: list[dict]) -> dict:
    """One case: the calls returned, or why there were none."""
    body = {"model": "bfcl", "messages": case["question"][0], "tools": tools, "tool_choice": "required",
            "temperature": 0, "max_tokens": 256}
    try:
        resp = requests.post(f"{base_url}/v1/chat/completions", json=body, timeout=300)
    except requests.RequestException as exc:
        return {"calls": [], "error": str(exc)}
    if resp.status_code != 200:
        return {"calls": [], "error": f"{resp.status_code}: {resp.text[:200]}"}
    message = resp.json()["choices"][0]["message"]
    return {"calls": [c["function"] for c in message.get("tool_calls") or []], "text": message.get("content")}


def valid(calls: list[dict], tools: list[dict]) -> bool:
    """Every call names a listed function and its arguments match that function's schema."""
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    if not calls:
        return False
    try:
        for call in calls:
            jsonschema.validate(json.loads(call["arguments"]), schemas[call["name"]])
    except (KeyError, ValueError, jsonschema.ValidationError):
        return False
    return True


def tool_calls(work: Path, limit: int = DEFAULT_CASES) -> dict:
    to_tools, check = _bfcl()
    targets: dict[str, str] = {}
    started: list[Service] = []
    try:
        started.append(expert("ai_expert", work / "bfcl-expert", env={"THREADS": "1"}).start())
        targets["expert"] = started[-1].url
        server = llama_server(work, 4, "--jinja")
        skipped = server if isinstance(server, str) else None
        if not skipped:
            started.append(server)
            targets["llama-server"] = server.url
            started.append(expert("ai_expert", work / "bfcl-remote", env={"REMOTE_URL": f"{server.url}/v1"}).start())
            targets["expert on llama-server"] = started[-1].url
        all_cases = [c for category in CATEGORIES for c in cases(category, limit)]
        rows = []

        def run(case: dict) -> dict:
            tools = to_tools(case["function"])
            row = {"id": case["id"], "category": case["category"]}
            for name, url in targets.items():  # the targets in turn, case by case: interleaved
                got = ask(url, case, tools)
                output = [{c["name"]: _arguments(c)} for c in got["calls"]]
                row[name] = {"valid": valid(got["calls"], tools),
                             "correct": bool(output) and check(case["function"], output, case["ground_truth"],
                                                               case["category"]),
                             "calls": got["calls"], "error": got.get("error")}
            return row

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            rows = list(pool.map(run, all_cases))
    finally:
        for service in started:
            service.stop()
    summary = {name: {category: _score([r[name] for r in rows if r["category"] == category])
                      for category in CATEGORIES} for name in targets}
    return {"cases": len(rows), "per_category": limit or "all", "skipped": skipped, "summary": summary, "rows": rows}


def _arguments(call: dict) -> dict:
    try:
        value = json.loads(call["arguments"])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _score(results: list[dict]) -> dict:
    n = len(results) or 1
    return {"n": len(results), "valid_calls": round(sum(r["valid"] for r in results) / n, 3),
            "accuracy": round(sum(r["correct"] for r in results) / n, 3)}


def report(t: dict) -> None:
    print(f"\n== Tool calling: BFCL simple_python + multiple, {t['per_category']} cases each, tool_choice required, "
          "AST-checked ==")
    if t["skipped"]:
        print(f"(llama-server side skipped: {t['skipped']})")
    print(f"{'target':>24} | " + " | ".join(f"{c} valid / accuracy" for c in CATEGORIES))
    for name, by_category in t["summary"].items():
        print(f"{name:>24} | " + " | ".join(f"{s['valid_calls']:.0%} / {s['accuracy']:.0%} (n={s['n']})"
                                            for s in by_category.values()))


def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CASES
    with tempfile.TemporaryDirectory() as tmp:
        t = tool_calls(Path(tmp), limit)
    report(t)


if __name__ == "__main__":
    main()
