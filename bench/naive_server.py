"""The seed's design, as a baseline: one ``model.generate()`` per request, float32, no batching.

Served the same way as an expert (gunicorn, one worker, many threads), and given the same work as the ai_expert
(its system prompt and default repetition penalty), so the benchmark compares engines, not servers or prompts.
Run: ``python -m bench.naive_server PORT``.
"""

from __future__ import annotations

import sys
import time

import torch
from flask import Flask, request

from agents.personas import get_persona
from common.engine.loading import load_model
from common.serve import serve
from common.settings import AgentSettings
from harness.services import MODEL_CACHE

SYSTEM = get_persona("ai_expert").system_prompt
REPETITION_PENALTY = AgentSettings.model_fields["default_repetition_penalty"].default


def create_app() -> Flask:
    model, tokenizer, source = load_model("embedded", dtype="float32", cache_dir=MODEL_CACHE)
    app = Flask(__name__)

    @app.get("/ready")
    def ready():
        return {"status": "ready"}

    @app.post("/chat")
    def chat():
        body = request.get_json()
        started = time.perf_counter()
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body["intent"]}]
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=body["max_new_tokens"],
                                 min_new_tokens=body.get("min_new_tokens", 0), do_sample=False,
                                 repetition_penalty=REPETITION_PENALTY)
        new = out[0][inputs["input_ids"].shape[1]:]
        return {"response": tokenizer.decode(new, skip_special_tokens=True).strip(), "model": source.name,
                "usage": {"completion_tokens": int(new.shape[0])},
                "elapsed_ms": int((time.perf_counter() - started) * 1000)}

    return app


if __name__ == "__main__":
    serve(create_app, "127.0.0.1", int(sys.argv[1]), log_level="warning")
