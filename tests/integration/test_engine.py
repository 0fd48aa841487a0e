"""The batched engine on the embedded model, in-process: batching must not change answers, and rows are independent.

Which invariant holds depends on the dtype and the weights. In float32 on dense weights a greedy answer is bit-for-bit
the same decoded alone or in any batch: the exactness tests run there, explicitly (WEIGHTS=auto's float16 copies
serve few-row steps only, so there too a batch's width can change a row's rounding). In bfloat16 (what
``DTYPE=auto`` picks on CPUs with AVX512-BF16) the matrix kernels round differently for different batch shapes, so
a greedy answer may change with the load; what holds there is closeness, measured on identical inputs (teacher
forcing) against float32 and against rows decoded alone. Every behavioural test runs in both dtypes, on any CPU:
one without native bfloat16 is slower, not wrong.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from common.engine import fp16, int4
from common.engine.decoders import make_decoder
from common.engine.decoding import teacher_forced
from common.engine.loading import embedded_gguf_path, load_model
from common.engine.local import LocalEngine, detokenize_step
from common.engine.types import (
    Constraint,
    EngineNotReady,
    EngineOverloaded,
    GenerationCancelled,
    GenerationRequest,
    GenerationTimeout,
    InvalidConstraint,
)
from common.text import ends_a_sentence, is_degenerate, loop_start
from harness.services import MODEL_CACHE

pytestmark = pytest.mark.integration
DTYPES = ["float32", "bfloat16"]
# The decoders teacher-forced below: each dtype on dense weights, and bfloat16 on the checkpoint's own quantized
# weights (WEIGHTS=auto's choice on a CPU with AVX512; elsewhere that variant is skipped, since auto does not run it),
# eager and with its few-row step compiled (COMPILE=auto's choice there); and float32 with float16 copies of its
# weights for few-row steps (WEIGHTS=auto's choice for float32, where torch has fbgemm), eager and with its one-row
# step compiled.
FORCED_DECODERS = [*DTYPES, "int4", "compiled", "fp16", "fp16 compiled"]
INT4_UNSUPPORTED = int4.unsupported_reason(torch.bfloat16)
FP16_UNSUPPORTED = fp16.unsupported_reason(torch.float32)
QUESTIONS = ["What is a neural network?", "Explain the GDPR right to erasure.", "What is a contract?",
             "How does TCP work?", "Who wrote Hamlet?", "What is liability?"]
# Answers to teacher-force: varied text (law, ML, code, Chinese) the model did not write itself.
FORCED = [
    ("What does the GDPR require?", "The General Data Protection Regulation sets rules for how organisations process "
     "personal data. Controllers must have a lawful basis, such as consent or a contract, and must tell people what "
     "they do with their data."),
    ("Explain gradient descent.", "Gradient descent updates a model's parameters in the direction that reduces the "
     "loss. The learning rate sets the step size: too large and training diverges, too small and it crawls."),
    ("Write a Fibonacci function.", "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, "
     "a + b\n    return a\n"),
    ("什么是机器学习？", "机器学习是人工智能的一个分支，它让计算机从数据中学习规律，而不是依靠明确编写的规则。"),
    ("What is a contract?", "A contract is a legally binding agreement between two or more parties. It requires an "
     "offer, acceptance, consideration and the intention to create legal relations."),
]


def ask(question: str, system: str | None = None, **kw) -> GenerationRequest:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return GenerationRequest(messages=messages, max_new_tokens=kw.pop("n", 24), **kw)


@pytest.fixture(scope="module")
def engines():
    """One engine per dtype and weights, started on first use and shared by the module's tests."""
    started: dict[tuple[str, str], LocalEngine] = {}

    def get(dtype: str, weights: str = "auto") -> LocalEngine:
        if (dtype, weights) not in started:
            engine = LocalEngine(dtype=dtype, cache_dir=MODEL_CACHE, max_batch_size=8, max_queue=8, weights=weights)
            started[dtype, weights] = engine.start()
            assert engine.wait_ready(600), engine.status
        return started[dtype, weights]

    yield get
    for engine in started.values():
        engine.stop()


@pytest.fixture(params=DTYPES)
def engine(request, engines) -> LocalEngine:
    return engines(request.param)


@pytest.fixture
def exact(engines) -> LocalEngine:
    """The float32 engine on dense weights, where greedy answers do not depend on the batch."""
    return engines("float32", "dense")


@pytest.fixture(scope="module")
def forced():
    """The lean decoder in each dtype, and FORCED as (prompt ids, answer ids)."""
    decoders, tokenizer = {}, None
    for dtype in DTYPES:
        model, tokenizer, source = load_model("embedded", dtype=dtype, cache_dir=MODEL_CACHE)
        decoders[dtype] = make_decoder(model, weights="dense")
        if dtype == "float32" and FP16_UNSUPPORTED is None:
            decoders["fp16"] = make_decoder(model, weights="fp16")
            decoders["fp16 compiled"] = make_decoder(model, weights="fp16", compile_dir=MODEL_CACHE)
            assert decoders["fp16 compiled"].step is not None, "the decode step did not compile (see the log)"
        if dtype == "bfloat16" and INT4_UNSUPPORTED is None:
            decoders["int4"] = make_decoder(model, weights="auto", source=source)
            assert decoders["int4"].int4
            decoders["compiled"] = make_decoder(model, weights="auto", source=source, compile_dir=MODEL_CACHE)
            assert decoders["compiled"].step is not None, "the decode step did not compile (see the log)"
            assert decoders["compiled"].step.max_rows >= len(FORCED)  # the batch below runs it too
    prompts, answers = [], []
    for question, answer in FORCED:
        turn = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(turn, add_generation_prompt=True, return_dict=True)["input_ids"]
        prompts.append(list(prompt))
        answers.append(tokenizer(answer, add_special_tokens=False)["input_ids"])
    return decoders, prompts, answers, tokenizer.pad_token_id


def test_batched_greedy_answers_equal_answers_decoded_alone(exact):
    alone = [exact.submit(ask(q)).result().text for q in QUESTIONS]
    together = [g.result().text for g in [exact.submit(ask(q)) for q in QUESTIONS]]
    assert together == alone
    staggered = []
    for q in QUESTIONS:  # each joins a batch already decoding: continuous batching
        staggered.append(exact.submit(ask(q)))
        time.sleep(0.15)
    assert [g.result().text for g in staggered] == alone


def test_the_lean_decoder_answers_as_the_transformers_forward_does(exact):
    """Also with a system prompt, whose keys and values the lean decoder computes once and reuses."""
    assert type(exact.decoder).__name__ == "LlamaDecoder"
    requests = [ask(q, n=40, system="You are a careful expert. Answer briefly." if i % 2 else None)
                for i, q in enumerate(QUESTIONS[:4])]
    reference = LocalEngine(dtype="float32", cache_dir=MODEL_CACHE, decoder="transformers").start()
    try:
        assert reference.wait_ready(600), reference.status
        expected = [g.result().text for g in [reference.submit(r) for r in requests]]
    finally:
        reference.stop()
    for _ in range(2):  # the second time the system prompt comes from the prefix cache
        assert [g.result().text for g in [exact.submit(r) for r in requests]] == expected


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True)]
    return sum(x == y for x, y in pairs) / len(pairs)


def _decoder(decoders, kind):
    if kind not in decoders:
        reason = FP16_UNSUPPORTED if kind.startswith("fp16") else INT4_UNSUPPORTED
        pytest.skip(f"WEIGHTS=auto does not run {kind} here: {reason}")
    return decoders[kind]


@pytest.mark.parametrize(("eager", "compiled", "together"), [
    ("int4", "compiled", False), ("int4", "compiled", True), ("fp16", "fp16 compiled", False)])
def test_the_compiled_step_scores_the_text_as_the_eager_step_does(forced, eager, compiled, together):
    """Rows alone, and on 4-bit weights the five rows batched too, run the compiled step: against the eager step on
    the same weights (4-bit, or float16 copies) with rows alone, the top-1 token is the same almost everywhere and
    the log-probabilities stay close (the two only round differently)."""
    decoders, prompts, answers, pad = forced
    top_eager, logp_eager = teacher_forced(_decoder(decoders, eager), prompts, answers, pad, together=False)
    top_compiled, logp_compiled = teacher_forced(_decoder(decoders, compiled), prompts, answers, pad,
                                                 together=together)
    assert _agreement(top_compiled, top_eager) >= 0.97
    assert all(float((a - b).abs().mean()) < 0.05 for a, b in zip(logp_compiled, logp_eager, strict=True))


def test_the_checkpoints_quantized_tensors_are_the_weights_the_model_loads():
    """What the 4-bit path runs is the GGUF's own Q4_1 and Q8_0 values: de-quantized, exactly the float32 weights
    transformers' GGUF loader made of them (Q and K rows put back in its order, the tied head included)."""
    model, _, _ = load_model("embedded", dtype="float32", cache_dir=MODEL_CACHE)
    planes = int4.read_gguf(embedded_gguf_path(), model.config)
    weights = model.state_dict()
    assert set(planes) == {*int4.linear_names(model.config), int4.HEAD}
    assert len(planes[int4.HEAD]) == 2  # Q8_0: two 4-bit planes
    for name, p in planes.items():
        assert int4.dequantize(p).equal(weights[name]), name


@pytest.mark.parametrize("kind", ["bfloat16", "int4", "compiled", "fp16", "fp16 compiled"])
def test_fewer_bits_predict_the_next_token_as_float32_does(forced, kind):
    """Teacher-forced over the same text, bfloat16's top-1 token matches float32's (measured on an AVX512-BF16 EPYC:
    210 of 216 tokens, 97.2%), and the log-probabilities it gives the text stay close (measured: 0.013-0.039 nats
    per token on average). The same holds on the checkpoint's 4-bit weights (``make bench`` measures both over
    2,000 tokens), batched through the compiled step too, and for float32 on float16 copies of its weights, closer
    still (99.9% over those tokens)."""
    decoders, prompts, answers, pad = forced
    top_f32, logp_f32 = teacher_forced(decoders["float32"], prompts, answers, pad)
    top_bf16, logp_bf16 = teacher_forced(_decoder(decoders, kind), prompts, answers, pad)
    assert sum(map(len, answers)) >= 200
    assert _agreement(top_bf16, top_f32) >= 0.95
    drift = [float((a - b).abs().mean()) for a, b in zip(logp_bf16, logp_f32, strict=True)]
    assert max(drift) < 0.15, drift  # mean |log p| difference per token, in nats


@pytest.mark.parametrize("dtype", FORCED_DECODERS)
def test_rows_in_a_batch_score_the_text_as_rows_alone(forced, dtype):
    """The bfloat16 batch effect is small where it is not zero: batched and alone rows agree on the next token almost
    everywhere (measured: 211 of 216 tokens, 0.012-0.050 nats per token). In float32 they agree exactly. On 4-bit
    weights, rows alone run the int4 kernel and the batch of five the dense copy: close too; with the step compiled,
    both run it."""
    decoders, prompts, answers, pad = forced
    decoder = _decoder(decoders, dtype)
    top_batched, logp_batched = teacher_forced(decoder, prompts, answers, pad, together=True)
    top_alone, logp_alone = teacher_forced(decoder, prompts, answers, pad, together=False)
    if dtype == "float32":
        assert top_batched == top_alone
        assert all(float((a - b).abs().max()) < 1e-3 for a, b in zip(logp_batched, logp_alone, strict=True))
    else:
        assert _agreement(top_batched, top_alone) >= 0.95
        assert all(float((a - b).abs().mean()) < 0.15 for a, b in zip(logp_batched, logp_alone, strict=True))


def test_a_greedy_answer_repeats_at_the_same_load(engine):
    """Whatever the dtype, the same request alone gives the same answer: only the batch around it can change it."""
    first = [engine.submit(ask(q)).result().text for q in QUESTIONS[:3]]
    assert [engine.submit(ask(q)).result().text for q in QUESTIONS[:3]] == first


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


def test_a_structure_near_its_token_budget_is_closed_whole(engine):
    schema = {"type": "object", "properties": {"title": {"type": "string"}, "story": {"type": "string"},
                                               "tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["title", "story", "tags"]}
    long = ask("Write a very long story about a dragon, as JSON with a title, the story and tags.", n=48,
               constraint=Constraint("json", schema))
    result = engine.submit(long).result()
    answer = json.loads(result.text)  # whole, though the story alone would need hundreds of tokens
    assert set(answer) == {"title", "story", "tags"} and result.finish_reason == "stop"
    assert result.completion_tokens <= 48


def test_the_loop_guard_stops_a_looping_row_and_spares_the_others_in_its_batch(engine):
    counting = "Count from 1 to 500, separated by spaces."
    guarded = engine.submit(ask(counting, n=300, loop_guard=True, end_at_sentence=True))
    unguarded = engine.submit(ask(counting, n=120))
    prose = engine.submit(ask("What is a contract?", n=60, loop_guard=True))
    guarded, unguarded, prose = guarded.result(), unguarded.result(), prose.result()
    assert guarded.looped and guarded.finish_reason == "stop" and guarded.completion_tokens < 120
    assert loop_start(guarded.text) is None and len(guarded.text) < 80
    assert unguarded.completion_tokens == 120 and is_degenerate(unguarded.text) and not unguarded.looped
    assert not prose.looped and prose.text


def test_an_answer_cut_by_its_budget_ends_at_a_sentence(engine):
    gens = [engine.submit(ask(q, n=70, end_at_sentence=True)) for q in QUESTIONS[:4]]
    streamed = [engine.submit(ask(QUESTIONS[0], n=70, end_at_sentence=True))]
    cut = [r for r in (g.result() for g in gens + streamed) if r.finish_reason == "length"]
    assert len(cut) >= 3
    for result in cut:  # a full stop, or the end of a line (a heading, a list item)
        assert result.completion_tokens == 70 and (ends_a_sentence(result.text) or result.text.endswith(":")), result
    assert "".join(streamed[0]) == streamed[0].result().text


def test_streamed_deltas_add_up_to_the_result(engine):
    gen = engine.submit(ask("What is encryption?", n=30))
    assert "".join(gen) == gen.result().text


@pytest.mark.parametrize("text", [
    "Plain words, then  double  spaces and a tab\there.",
    "Accents: déjà vu, naïve façade; Ünïcödé.",
    "Emoji 🎉🤖 and CJK 机器学习 and Cyrillic Привет.",
    "def f(x):\n    return {'a': [1, 2]}  # code\n\n",
])
def test_incremental_detokenizing_adds_up_to_decoding_the_whole_answer(exact, text):
    engine = exact  # only its tokenizer is used
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces, window = [], (0, 0)
    for n in range(1, len(ids) + 1):
        piece, window = detokenize_step(engine.tokenizer, ids[:n], window, final=n == len(ids))
        pieces.append(piece)
    assert not any("\ufffd" in p for p in pieces)  # never half a character
    assert "".join(pieces) == engine.tokenizer.decode(ids, skip_special_tokens=True)


def test_cancellation_and_timeouts_free_their_rows_and_spare_the_rest(exact):
    engine = exact  # float32: the row that is spared must answer exactly as it does alone
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


def test_a_request_that_does_not_offer_its_system_prompt_leaves_the_prefix_cache_alone(exact):
    before = list(exact.decoder._prefixes)
    exact.submit(ask("What is a contract?", system="Answer in one word, caller 7.", n=4, cache_prefix=False)).result()
    assert list(exact.decoder._prefixes) == before  # nothing added, nothing evicted
    exact.submit(ask("What is a contract?", system="Answer in one word, caller 8.", n=4)).result()
    assert list(exact.decoder._prefixes)[-1] not in before


def test_stopping_the_engine_ends_what_is_in_flight_or_waiting_with_an_error():
    engine = LocalEngine(cache_dir=MODEL_CACHE, max_batch_size=1, max_queue=4).start()
    assert engine.wait_ready(600)
    running = engine.submit(ask("Write a long essay on contracts.", n=2000, min_new_tokens=2000))
    waiting = engine.submit(ask("What is a tort?", n=2000, min_new_tokens=2000))  # no room in a batch of one
    next(iter(running))  # decoding has begun
    engine.stop()
    for gen in (running, waiting):
        with pytest.raises(EngineNotReady, match="stopped"):
            gen.result()
    assert not engine.ready and engine.status == "the engine has stopped"
    with pytest.raises(EngineNotReady):
        engine.submit(ask("hi"))


def test_a_constraint_too_slow_to_compile_is_refused_not_waited_for(exact):
    """Within the size caps a regex can still take a second to compile; past the compile timeout the request is
    refused (a 400 over HTTP) and the caller's thread is free at once."""
    slow = "(.{0,100}y){0,20}"  # about 1 s here; distinct from every other test's, so xgrammar has not cached it
    exact.grammars.timeout_s = 0.05
    try:
        started = time.perf_counter()
        with pytest.raises(InvalidConstraint, match="did not compile within"):
            exact.submit(ask("Say something.", constraint=Constraint("regex", slow)))
        assert time.perf_counter() - started < 0.5
    finally:
        exact.grammars.timeout_s = 10.0
    assert exact.submit(ask("Say something.", n=8, constraint=Constraint("regex", slow))).result().finish_reason


def test_admission_by_kv_cache_memory_holds_requests_until_rows_leave():
    """With room in its KV_CACHE_MB for two of these rows, the engine decodes two at a time and the others wait
    their turn (answered, and answered as alone); a request that alone needs more than the budget is refused."""
    import threading

    engine = LocalEngine(dtype="float32", cache_dir=MODEL_CACHE, kv_cache_mb=9).start()
    try:
        assert engine.wait_ready(600), engine.status
        per_row = engine._cache_bytes(1, 60) / 2**20
        assert 2 * per_row <= 9 < 3 * per_row, per_row  # the questions below render to about 35 tokens + 24 new
        alone = [engine.submit(ask(q)).result().text for q in QUESTIONS[:4]]
        seen, done = [], threading.Event()

        def watch():
            while not done.is_set():
                seen.append(engine.running_rows)
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        together = [g.result().text for g in [engine.submit(ask(q)) for q in QUESTIONS[:4]]]
        done.set()
        watcher.join()
        assert together == alone and max(seen) == 2
        with pytest.raises(InvalidConstraint, match="KV_CACHE_MB"):
            engine.submit(ask(QUESTIONS[0], n=400))
    finally:
        engine.stop()
