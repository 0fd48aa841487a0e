"""One output pipeline for every engine: the same scripted token stream gives the same text through the local engine's
scheduler and through the remote engine reading a server's stream (stops, loop guard, hold-back, sentence cut)."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from common.engine.local import LocalEngine, _Row
from common.engine.output import OutputProcessor
from common.engine.types import Generation, GenerationRequest
from tests.unit.test_remote import engine as remote_engine

EOS = 0


class PieceTokenizer:
    """Token i is ``pieces[i]``; token 0 ends the turn."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids if i != EOS)


def through_local(pieces: list[str], request: GenerationRequest) -> tuple[list[str], str, str]:
    """Drive the local engine's sampling and streaming step by step, the model's logits naming each scripted token."""
    vocab = ["<eos>", *pieces]
    eng = LocalEngine()
    eng.tokenizer, eng.eos_ids, eng.vocab_size, eng.pad_id = PieceTokenizer(vocab), [EOS], len(vocab), EOS
    eng.closing_ids, eng.device = torch.tensor([EOS]), "cpu"
    row = _Row(Generation(request), prompt_ids=[EOS])
    for token in [*range(1, len(vocab)), EOS]:
        logits = torch.full((1, len(vocab)), -10.0)
        logits[0, token] = 10.0
        eng._sample_and_advance([row], logits)
        if eng._retire(row):
            break
    result = row.gen.result()
    return list(row.gen), result.text, result.finish_reason


def through_remote(pieces: list[str], request: GenerationRequest) -> tuple[list[str], str, str]:
    """The same tokens as a server streams them: one chunk each, then the server's own finish reason."""
    finish = "length" if len(pieces) >= request.max_new_tokens else "stop"
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    sse = "".join(f"data: {json.dumps({'id': 'c', 'object': 'chat.completion.chunk', 'created': 1, 'model': 'm', **c})}"
                  "\n\n" for c in chunks) + "data: [DONE]\n\n"
    reply = httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
    gen = remote_engine([reply], [], dialect="vllm").submit(request)
    result = gen.result()
    return list(gen), result.text, result.finish_reason


def ask(max_new_tokens: int = 512, **options) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": "Is it binding?"}], max_new_tokens=max_new_tokens,
                             **options)


LOOPING = [" A contract", " binds", " its parties.", *[" The clause", " applies", " here."] * 12]
SCRIPTS = {
    "loop guard then a sentence cut": (LOOPING, ask(loop_guard=True, end_at_sentence=True),
                                       "A contract binds its parties."),
    "stop string split across tokens": ([" Yes", ", it", " is.", " EN", "D", " more"], ask(stop=["END"]),
                                        "Yes, it is."),
    "budget cut ends at a sentence": ([" It binds.", " Both", " parties", " must"], ask(4, end_at_sentence=True),
                                      "It binds."),
    "plain answer": ([" It", " binds", "."], ask(), "It binds."),
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_same_token_stream_gives_the_same_text_through_the_local_and_the_remote_engine(name):
    pieces, request, expected = SCRIPTS[name]
    local_deltas, local_text, local_finish = through_local(pieces, request)
    remote_deltas, remote_text, remote_finish = through_remote(pieces, request)
    assert local_text == remote_text == expected
    # what was streamed is the answer: nothing sent was later cut
    assert "".join(local_deltas) == "".join(remote_deltas) == expected
    assert local_finish == remote_finish


def test_the_loop_guard_holds_back_what_it_may_cut_and_says_it_ended_the_answer():
    out = OutputProcessor(ask(loop_guard=True))
    sent = [out.feed(p, n + 1) for n, p in enumerate(LOOPING)]
    assert out.looped and out.finish_reason == "stop"
    # nothing went out while a loop could still be cut from it; then one copy of what repeats, at once
    assert sent[:10] == [""] * 10 and sent[10] == "A contract binds its parties. The clause applies here"
    assert "".join(sent) == out.text.strip()


def test_a_constrained_output_is_never_cut():
    from common.engine.types import Constraint

    out = OutputProcessor(ask(4, loop_guard=True, end_at_sentence=True, constraint=Constraint("json", None)))
    sent = "".join(out.feed(p, n + 1) for n, p in enumerate(['{"a": ', '"x x x x x x x x"', ', "b"', ": 1}"]))
    sent += out.feed("", 4, "length")
    assert sent == '{"a": "x x x x x x x x", "b": 1}'
