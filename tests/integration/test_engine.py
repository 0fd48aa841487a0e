"""The batched engine on the embedded model, in-process: batching must not change answers, and rows are independent."""

from __future__ import annotations

import re
import time

import pytest

from common.engine.local import LocalEngine, detokenize_step
from common.engine.types import Constraint, EngineOverloaded, GenerationCancelled, GenerationRequest, GenerationTimeout
from tests.services import MODEL_CACHE

pytestmark = pytest.mark.integration
QUESTIONS = ["What is a neural network?", "Explain the GDPR right to erasure.", "What is a contract?",
             "How does TCP work?", "Who wrote Hamlet?", "What is liability?"]


def ask(question: str, system: str | None = None, **kw) -> GenerationRequest:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return GenerationRequest(messages=messages, max_new_tokens=kw.pop("n", 24), **kw)


@pytest.fixture(scope="module")
def engine():
    engine = LocalEngine(cache_dir=MODEL_CACHE, max_batch_size=8, max_queue=8).start()
    assert engine.wait_ready(600), engine.status
    yield engine
    engine.stop()


def test_batched_greedy_answers_equal_answers_decoded_alone(engine):
    alone = [engine.submit(ask(q)).result().text for q in QUESTIONS]
    together = [g.result().text for g in [engine.submit(ask(q)) for q in QUESTIONS]]
    assert together == alone
    staggered = []
    for q in QUESTIONS:  # each joins a batch already decoding: continuous batching
        staggered.append(engine.submit(ask(q)))
        time.sleep(0.15)
    assert [g.result().text for g in staggered] == alone


def test_the_lean_decoder_answers_as_the_transformers_forward_does(engine):
    """Also with a system prompt, whose keys and values the lean decoder computes once and reuses."""
    assert type(engine.decoder).__name__ == "LlamaDecoder"
    requests = [ask(q, n=40, system="You are a careful expert. Answer briefly." if i % 2 else None)
                for i, q in enumerate(QUESTIONS[:4])]
    reference = LocalEngine(cache_dir=MODEL_CACHE, decoder="transformers").start()
    try:
        assert reference.wait_ready(600), reference.status
        expected = [g.result().text for g in [reference.submit(r) for r in requests]]
    finally:
        reference.stop()
    for _ in range(2):  # the second time the system prompt comes from the prefix cache
        assert [g.result().text for g in [engine.submit(r) for r in requests]] == expected


def test_stop_strings_and_grammars_hold_per_row_in_one_batch(engine):
    gens = [
        engine.submit(ask("Count from 1 to 20, separated by commas.", n=60, stop=["7"])),
        engine.submit(ask("Is Paris in France?", constraint=Constraint("choice", ["yes", "no"]))),
        engine.submit(ask("Give a date.", n=20, constraint=Constraint("regex", r"[0-9]{4}-[0-9]{2}-[0-9]{2}"))),
        engine.submit(ask("Describe a cat.", n=30)),
    ]
    counted, choice, date, free = [g.result() for g in gens]
    assert "7" not in counted.text and counted.finish_reason == "stop" and counted.text
    assert choice.text in ("yes", "no")
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", date.text)
    assert free.completion_tokens == 30 and free.finish_reason == "length"


def test_streamed_deltas_add_up_to_the_result(engine):
    gen = engine.submit(ask("What is encryption?", n=30))
    assert "".join(gen) == gen.result().text


@pytest.mark.parametrize("text", [
    "Plain words, then  double  spaces and a tab\there.",
    "Accents: déjà vu, naïve façade; Ünïcödé.",
    "Emoji 🎉🤖 and CJK 机器学习 and Cyrillic Привет.",
    "def f(x):\n    return {'a': [1, 2]}  # code\n\n",
])
def test_incremental_detokenizing_adds_up_to_decoding_the_whole_answer(engine, text):
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces, window = [], (0, 0)
    for n in range(1, len(ids) + 1):
        piece, window = detokenize_step(engine.tokenizer, ids[:n], window, final=n == len(ids))
        pieces.append(piece)
    assert not any("\ufffd" in p for p in pieces)  # never half a character
    assert "".join(pieces) == engine.tokenizer.decode(ids, skip_special_tokens=True)


def test_cancellation_and_timeouts_free_their_rows_and_spare_the_rest(engine):
    keep = engine.submit(ask(QUESTIONS[0]))
    cancelled = engine.submit(ask("Write a long story.", n=400, min_new_tokens=400))
    late = engine.submit(ask("Write a long essay.", n=400, min_new_tokens=400, timeout_s=1.0))
    time.sleep(0.5)
    cancelled.cancel()
    with pytest.raises(GenerationCancelled):
        cancelled.result()
    with pytest.raises(GenerationTimeout):
        late.result()
    assert keep.result().text == engine.submit(ask(QUESTIONS[0])).result().text
    deadline = time.monotonic() + 10
    while engine.running_rows and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.running_rows == 0


def test_a_full_queue_refuses_with_retry_after(engine):
    gens, refused = [], None
    try:
        for _ in range(40):
            gens.append(engine.submit(ask("Say something.", n=40, min_new_tokens=40)))
    except EngineOverloaded as exc:
        refused = exc
    assert refused is not None and refused.retry_after
    for g in gens:
        g.result()


def test_a_bad_sampling_request_fails_alone(engine):
    good = engine.submit(ask(QUESTIONS[2]))
    odd = engine.submit(ask("Hi", temperature=1e-30, top_p=1e-30))  # degenerate but valid: decodes greedily
    assert good.result().text and odd.result().text
