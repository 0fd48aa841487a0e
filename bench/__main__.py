"""``make bench``: Conclave's figures, each measured side by side with its baseline in one run.

Sections: expert throughput (batched engine vs the seed's generate()-per-request server at concurrency 1/4/16, waves
interleaved), decode speed and time to first token against llama.cpp's server (bench/speed.py), dense against quantized
weights (speed, and top-1 agreement with float32 over 2,000+ teacher-forced tokens; bench/weights.py), single-request
overhead (HTTP + scheduling vs a bare decode of the same tokens, alternated), memory (expert RSS idle and under load),
dtype quality, what reproducible greedy answers (float32 on dense weights) cost against bfloat16, /integrate panel wall
time vs its experts' times, routing accuracy on a labelled set, the quality of /integrate's answers on a dev set
(bench/quality.py), tool calling on BFCL against llama.cpp's server (bench/tool_calls.py), and the experts' knowledge
bases: fact recall with and without retrieval, citations, the store at 10,000 chunks (bench/knowledge.py), what tracing
costs: /chat with spans exported over OTLP against tracing off, interleaved (bench/tracing.py), and capacity with one
and two expert replicas behind haproxy on Postgres, interleaved (bench/scale.py).
Prints a table and writes JSON under bench/results/.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch
import yaml

from agents.personas import get_persona
from bench import knowledge, machine, quality, scale, speed, tool_calls, tracing, weights
from bench.load import ALONE, CORES, NEW_TOKENS, PROMPTS, PeakRss, p95
from common.engine.decoders import make_decoder
from common.engine.loading import cpu_has_native_bf16, load_model, pick_dtype
from harness.services import MODEL_CACHE, Service, expert, free_port, orchestrator_service

HERE = Path(__file__).parent
def load_wave(url: str, concurrency: int) -> dict:
    """``concurrency`` requests at once, each forced to NEW_TOKENS tokens; tokens/s over the wave's wall time."""

    def one(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        resp = requests.post(f"{url}/chat", timeout=1800, json={
            "intent": PROMPTS[i % len(PROMPTS)], "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS})
        resp.raise_for_status()
        return time.perf_counter() - started, resp.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(concurrency)))
    wall = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"concurrency": concurrency, "tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "p50_s": round(statistics.median(latencies), 2),
            "p95_s": round(p95(latencies), 2)}


# This VM's speed drifts by a third from minute to minute, so whatever is compared is measured interleaved: a
# batched wave, then a naive wave, repeated, keeping each server's best. The concurrency-16 waves are long enough to
# average the drift out.
REPEATS = {1: 3, 4: 2, 16: 1}


def throughput_and_memory(work: Path) -> dict:
    batched = expert("ai_expert", work / "batched", env=ALONE).start()
    naive_port = free_port()
    naive = Service("bench.naive_server", [str(naive_port)], work / "naive", port=naive_port).start()
    out: dict = {"batched": [], "naive": []}
    try:
        load_wave(batched.url, 1), load_wave(naive.url, 1)  # warm-up: first calls pay one-time costs
        out["rss_idle_mb"] = round(batched.rss_mb())
        with PeakRss(batched) as peak:
            for c, repeats in REPEATS.items():
                waves = [(load_wave(batched.url, c), load_wave(naive.url, c)) for _ in range(repeats)]
                for side, i in (("batched", 0), ("naive", 1)):
                    out[side].append(max((w[i] for w in waves), key=lambda w: w["tokens_per_s"]))
        out["rss_peak_mb"] = round(peak.peak)
    finally:
        batched.stop()
        naive.stop()
    return out


def single_request(work: Path, messages: list[dict], rounds: int = 5) -> dict:
    """HTTP + engine against a bare decode of the same tokens by the engine's own decoder and dtype, alternated
    round by round in this one window so both see the same machine."""
    server = expert("ai_expert", work / "single", env=ALONE).start()
    model, tokenizer, _ = load_model("embedded", dtype="auto", cache_dir=MODEL_CACHE)
    decoder = make_decoder(model)
    prompt_ids = prompt_ids_of(tokenizer, messages)
    try:
        _timed_chat(server.url), bare_decode(decoder, prompt_ids, 4)  # warm-up
        http, bare = [], []
        for _ in range(rounds):
            http.append(round(_timed_chat(server.url), 3))
            bare.append(round(bare_decode(decoder, prompt_ids, NEW_TOKENS), 3))
    finally:
        server.stop()
    return {"dtype": str(model.dtype).removeprefix("torch."), "decoder": type(decoder).__name__,
            "http_s": http, "bare_decode_s": bare,
            "overhead_median": round(statistics.median(h / b for h, b in zip(http, bare, strict=True)) - 1, 3)}


def _timed_chat(url: str) -> float:
    started = time.perf_counter()
    requests.post(f"{url}/chat", timeout=600, json={
        "intent": PROMPTS[0], "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}).raise_for_status()
    return time.perf_counter() - started


def prompt_ids_of(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]


def bare_decode(decoder, prompt_ids: list[int], new_tokens: int) -> float:
    """A bare greedy decode of exactly ``new_tokens`` tokens: no server, no scheduler, no sampling, no detokenizing."""
    started = time.perf_counter()
    with torch.inference_mode():
        logits, batch = decoder.prefill([prompt_ids], pad_id=0)
        for _ in range(new_tokens - 1):
            logits = decoder.decode(batch, logits.argmax(-1, keepdim=True))
    return time.perf_counter() - started


def in_process(messages: list[dict]) -> dict:
    """Bare decodes by dtype and decoder, generate() in float32, and greedy answers in both dtypes side by side."""
    chosen = str(pick_dtype("auto", "cpu")).removeprefix("torch.")
    out: dict = {"bare_decode_s": {}, "samples": []}
    models = {}
    for dtype in sorted({chosen, "float32", "bfloat16"}):
        model, tokenizer, _ = load_model("embedded", dtype=dtype, cache_dir=MODEL_CACHE)
        models[dtype] = model
        prompt_ids = prompt_ids_of(tokenizer, messages)
        for kind in ("auto", "transformers"):
            decoder = make_decoder(model, kind)
            bare_decode(decoder, prompt_ids, 4)  # warm-up
            out["bare_decode_s"][f"{dtype} {type(decoder).__name__}"] = round(
                min(bare_decode(decoder, prompt_ids, NEW_TOKENS) for _ in range(5)), 3)
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    started = time.perf_counter()
    with torch.inference_mode():
        models["float32"].generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    out["generate_float32_s"] = round(time.perf_counter() - started, 3)
    for question in ("What is a neural network?", "What does the GDPR protect?", "Why is the sky blue?"):
        row = {"prompt": question}
        msgs = [{"role": "user", "content": question}]
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        for dtype, model in models.items():
            with torch.inference_mode():
                gen = model.generate(**ids, max_new_tokens=40, do_sample=False)
            row[dtype] = tokenizer.decode(gen[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        out["samples"].append(row)
    return out


def dtypes_under_load(rounds: int = 2) -> dict:
    """What reproducible answers (``DTYPE=float32 WEIGHTS=dense``) cost and buy against bfloat16: greedy answers to
    PROMPTS decoded one at a time and all at once (how many come out identical), and tokens/s of each, the dtypes
    interleaved round by round. (float32's few-token steps on float16 copies, WEIGHTS=auto there, depend on the batch
    as bfloat16 does.)"""
    from common.engine.local import LocalEngine
    from common.engine.types import GenerationRequest

    engines = {d: LocalEngine(dtype=d, cache_dir=MODEL_CACHE, threads=CORES, weights=w).start()
               for d, w in (("float32", "dense"), ("bfloat16", "auto"))}
    out: dict = {}
    try:
        for engine in engines.values():
            engine.wait_ready()
        for _ in range(rounds):
            for dtype, engine in engines.items():
                requests_ = [GenerationRequest(messages=[{"role": "user", "content": q}], max_new_tokens=NEW_TOKENS)
                             for q in PROMPTS]
                started = time.perf_counter()
                alone = [engine.submit(r).result() for r in requests_]
                alone_s = time.perf_counter() - started
                started = time.perf_counter()
                together = [g.result() for g in [engine.submit(r) for r in requests_]]
                together_s = time.perf_counter() - started
                row = out.setdefault(dtype, {"identical": 0, "alone_tok_s": 0.0, f"c{len(PROMPTS)}_tok_s": 0.0})
                row["identical"] = sum(a.text == b.text for a, b in zip(alone, together, strict=True))
                row["alone_tok_s"] = max(row["alone_tok_s"],
                                         round(sum(r.completion_tokens for r in alone) / alone_s, 1))
                row[f"c{len(PROMPTS)}_tok_s"] = max(row[f"c{len(PROMPTS)}_tok_s"],
                                                    round(sum(r.completion_tokens for r in together) / together_s, 1))
    finally:
        for engine in engines.values():
            engine.stop()
    return {"prompts": len(PROMPTS), "native_bf16": cpu_has_native_bf16(), "by_dtype": out}


def panel(work: Path) -> dict:
    ai = expert("ai_expert", work / "p-ai").start()
    law = expert("law_expert", work / "p-law").start()
    orch = orchestrator_service(work / "p-orch", [ai.url, law.url]).start()
    runs = []
    try:
        for task in ("Who is liable when an AI system leaks personal data?",
                     "How should a company audit its machine learning models for bias?"):
            started = time.perf_counter()
            body = requests.post(f"{orch.url}/integrate", json={"task": task, "strategy": "panel"},
                                 timeout=1800).json()
            wall = time.perf_counter() - started
            times = [s["elapsed_ms"] / 1000 for s in body["steps"]]
            merge = body["synthesis_ms"] / 1000
            runs.append({"task": task, "wall_s": round(wall, 2), "expert_s": [round(t, 2) for t in times],
                         "sum_experts_s": round(sum(times), 2), "merge_s": round(merge, 2),
                         "wall_over_slowest_plus_merge": round(wall / (max(times) + merge), 2),
                         "wall_over_sum_plus_merge": round(wall / (sum(times) + merge), 2)})
    finally:
        orch.stop()
        ai.stop()
        law.stop()
    return {"runs": runs}


def routing() -> dict:
    """Routing accuracy on bench/routing_tasks.yaml: the semantic-ranking policy, and the LLM choosing alone."""
    from agents.personas import load_catalog
    from common.embedding import choose_embedder
    from common.engine.local import LocalEngine
    from common.engine.types import Constraint, GenerationRequest
    from common.protocol import AgentCard
    from common.settings import OrchestratorSettings
    from orchestrator.experts import Expert
    from orchestrator.react import PROMPT, StepForm, plan_routing
    from orchestrator.routing import Router

    tasks = yaml.safe_load((HERE / "routing_tasks.yaml").read_text())
    experts = [Expert(p.id, "", AgentCard(name=p.name, description=p.description, url="", version="1",
                                          skills=p.skills), None) for p in load_catalog().values()]
    settings = OrchestratorSettings()
    router = Router(choose_embedder(settings.router_embedder))
    engine = LocalEngine(cache_dir=MODEL_CACHE).start()
    engine.wait_ready()
    rows = []
    for item in tasks:
        ranking = router.rank(item["task"], experts)
        policy = plan_routing(ranking, "ranking", settings.routing_ratio, item["task"])
        tools = [r.name for r in ranking]
        prompt = PROMPT.format(ranking=", ".join(f"{r.name} {r.score:.2f}" for r in ranking),
                               tools="\n".join(f"{e.name}: {e.description}" for e in experts),
                               tool_names=", ".join(tools), input=item["task"], agent_scratchpad="")
        text = engine.submit(GenerationRequest(
            messages=[{"role": "user", "content": prompt}], max_new_tokens=200,
            constraint=Constraint("grammar", StepForm(tuple(tools), allow_final=False).grammar()))).result().text
        llm_first = text.split("Action: ")[1].split("\n")[0]
        rows.append({"task": item["task"], "expected": item["experts"], "ranking_first": policy.required[0],
                     "ranking_consults": policy.required, "llm_first": llm_first})
    engine.stop()
    both = [r for r in rows if len(r["expected"]) > 1]
    return {
        "tasks": len(rows),
        "ranking_first_right": sum(r["ranking_first"] in r["expected"] for r in rows),
        "llm_first_right": sum(r["llm_first"] in r["expected"] for r in rows),
        "both_needed": len(both),
        "both_consulted_by_ranking": sum(set(r["expected"]) <= set(r["ranking_consults"]) for r in both),
        "rows": rows,
    }


def report(results: dict) -> None:
    t = results["throughput"]
    print("\n== Expert throughput: batched engine vs generate() per request (64 tokens each; interleaved, best of "
          f"{', '.join(f'{n} at c{c}' for c, n in REPEATS.items())} waves) ==")
    print(f"{'conc':>4} | {'batched tok/s':>13} {'p50 s':>6} {'p95 s':>6} | {'naive tok/s':>11} {'p50 s':>6} "
          f"{'p95 s':>6} | ratio")
    for b, n in zip(t["batched"], t["naive"], strict=True):
        print(f"{b['concurrency']:>4} | {b['tokens_per_s']:>13} {b['p50_s']:>6} {b['p95_s']:>6} | "
              f"{n['tokens_per_s']:>11} {n['p50_s']:>6} {n['p95_s']:>6} | {b['tokens_per_s'] / n['tokens_per_s']:.2f}x")
    speed.report(results["llama_server"])
    weights.report(results["weights"])
    one = results["single_request"]
    p = results["in_process"]
    print(f"\n== Single request, {NEW_TOKENS} tokens ({one['dtype']}, {one['decoder']}), HTTP + engine and a bare "
          f"decode alternated {len(one['http_s'])} times ==")
    print(f"HTTP + engine: best {min(one['http_s']):.3f} s | bare decode: best {min(one['bare_decode_s']):.3f} s | "
          f"overhead, median of pairs {100 * one['overhead_median']:+.1f}% | model.generate() float32: "
          f"{p['generate_float32_s']:.3f} s | naive server: {t['naive'][0]['p50_s']} s")
    for name, s in p["bare_decode_s"].items():
        print(f"bare decode {name}: {NEW_TOKENS / s:.1f} tok/s")
    print(f"\n== Memory: expert RSS idle {t['rss_idle_mb']} MB, peak under load (up to 16 at once) "
          f"{t['rss_peak_mb']} MB ==")
    print("\n== Greedy answers by dtype ==")
    for row in p["samples"]:
        print(f"* {row['prompt']}")
        for dtype, text in row.items():
            if dtype != "prompt":
                print(f"    {dtype:>9}: {text[:110]!r}")
    d = results["dtypes"]
    print(f"\n== Reproducible greedy answers: {d['prompts']} prompts decoded alone, then all at once (CPU with native "
          f"bfloat16: {d['native_bf16']}; interleaved, best of each) ==")
    for dtype, row in d["by_dtype"].items():
        rates = " | ".join(f"{k.removesuffix('_tok_s')} {v} tok/s" for k, v in row.items() if k.endswith("_tok_s"))
        print(f"{dtype:>9}: identical alone and batched {row['identical']}/{d['prompts']} | {rates}")
    print("\n== /integrate panel: wall time vs its experts ==")
    for r in results["panel"]["runs"]:
        print(f"wall {r['wall_s']} s | experts {r['expert_s']} (sum {r['sum_experts_s']}) | merge {r['merge_s']} s | "
              f"wall/(slowest+merge) {r['wall_over_slowest_plus_merge']} | wall/(sum+merge) "
              f"{r['wall_over_sum_plus_merge']}")
    quality.report(results["quality"])
    tool_calls.report(results["tool_calls"])
    knowledge.report(results["knowledge"])
    tracing.report(results["tracing"])
    scale.report(results["scale"])
    r = results["routing"]
    print(f"\n== Routing on {r['tasks']} labelled tasks ==")
    print(f"semantic ranking picks a right expert first: {r['ranking_first_right']}/{r['tasks']} "
          f"({100 * r['ranking_first_right'] / r['tasks']:.0f}%) | SmolLM2 alone under a grammar: "
          f"{r['llm_first_right']}/{r['tasks']} | tasks needing both consulted both by the ranking policy: "
          f"{r['both_consulted_by_ranking']}/{r['both_needed']}")


def main() -> None:
    persona = get_persona("ai_expert")
    messages = [{"role": "system", "content": persona.system_prompt}, {"role": "user", "content": PROMPTS[0]}]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {
            "throughput": throughput_and_memory(work),
            "llama_server": speed.speed(work),
            "weights": weights.weights(),
            "single_request": single_request(work, messages),
            "in_process": in_process(messages),
            "dtypes": dtypes_under_load(),
            "panel": panel(work),
            "routing": routing(),
            "quality": quality.quality(work),
            "tool_calls": tool_calls.tool_calls(work),
            "knowledge": knowledge.knowledge(work),
            "tracing": tracing.tracing(work),
            "scale": scale.scale(work),
        }
    results["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    results["cpu"] = machine.cpu()
    results["onednn_kernels"] = machine.onednn_kernels()
    report(results)
    path = HERE / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
