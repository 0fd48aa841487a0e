"""The lean Llama decoder computes what the transformers forward computes, through prefill, decode, merge and select.

A tiny randomly initialised Llama stands in for a checkpoint here; tests/integration/test_engine.py runs the same
comparison on the embedded model.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from common.engine import llama
from common.engine.decoders import make_decoder
from common.engine.decoding import TransformersDecoder
from common.engine.llama import LlamaDecoder, unsupported_reason

PAD = 0


def tiny(cls=LlamaForCausalLM, config=LlamaConfig, **kw):
    torch.manual_seed(0)
    return cls(config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **kw)).eval()


def run_script(decoder, feed: dict[str, list[list[int]]]) -> list[torch.Tensor]:
    """Prefill A, decode, prefill B and merge it in, decode, drop rows, decode; every step's logits.

    Some prompts mark a prefix (which the lean decoder caches, leaving padding mid-row). Every decoder is fed the same
    tokens (``feed``), so the logits are comparable."""
    steps = []
    with torch.inference_mode():
        logits, batch = decoder.prefill([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], PAD, [3, 0, 2])
        steps.append(logits)
        for tokens in feed["a"]:
            steps.append(decoder.decode(batch, torch.tensor(tokens)[:, None]))
        logits_b, batch_b = decoder.prefill([[20, 21, 22, 23, 24, 25, 26, 27], [30]], PAD, [6, 0])
        steps.append(logits_b)
        batch = decoder.merge(batch, batch_b)
        for tokens in feed["merged"]:
            steps.append(decoder.decode(batch, torch.tensor(tokens)[:, None]))
        batch = decoder.select(batch, [0, 2, 3])
        for tokens in feed["selected"]:
            steps.append(decoder.decode(batch, torch.tensor(tokens)[:, None]))
    return steps


FEED = {"a": [[40, 41, 42], [43, 44, 45]], "merged": [[50, 51, 52, 53, 54], [55, 56, 57, 58, 59]],
        "selected": [[60, 61, 62], [63, 64, 65], [66, 67, 68]] * 30}  # long enough to outgrow the cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_decoder_matches_the_transformers_forward(dtype):
    model = tiny().to(dtype)
    reference = run_script(TransformersDecoder(model), FEED)
    lean = run_script(LlamaDecoder(model, batch_hint=4), FEED)
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    for ref, got in zip(reference, lean, strict=True):
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=tolerance, rtol=0), (got - ref).abs().max()


def test_a_cached_prefix_gives_what_prefilling_the_whole_prompt_gives():
    model = tiny()
    system, other = list(range(30, 42)), [70, 71, 72, 73, 74]
    prompts = [system + [5, 6, 7], system + [8], [9, 10, 11, 12], other + [13, 14]]
    lens = [len(system), len(system), 0, len(other)]
    lean = LlamaDecoder(model)
    feed = [[20, 21, 22, 23], [24, 25, 26, 27]]
    with torch.inference_mode():
        expected, whole = TransformersDecoder(model).prefill(prompts, PAD)
        expected_steps = [TransformersDecoder(model).decode(whole, torch.tensor(t)[:, None]) for t in feed]
        for _ in range(2):  # the first pass computes both prefixes, the second finds them cached
            got, batch = lean.prefill(prompts, PAD, lens)
            assert torch.allclose(got, expected, atol=1e-4, rtol=0)
            for tokens, want in zip(feed, expected_steps, strict=True):
                assert torch.allclose(lean.decode(batch, torch.tensor(tokens)[:, None]), want, atol=1e-4, rtol=0)
    assert len(lean._prefixes) == 2


def test_what_a_prompt_shares_with_a_recent_one_is_not_prefilled_again(monkeypatch):
    """A repeated prompt is not prefilled at all (its keys, values and logits are kept), a longer one (a
    conversation's next turn) only what is new; the logits are what prefilling the whole prompt gives."""
    model = tiny()
    lean, widths = LlamaDecoder(model), []
    forward = lean._forward
    monkeypatch.setattr(lean, "_forward", lambda ids, *a: widths.append(ids.shape[1]) or forward(ids, *a))
    first, repeated, longer = list(range(30, 50)), list(range(30, 50)), [*range(30, 50), 60, 61, 62]
    with torch.inference_mode():
        for prompt in (first, repeated, longer):
            got, batch = lean.prefill([prompt], PAD)
            expected, whole = TransformersDecoder(model).prefill([prompt], PAD)
            assert torch.allclose(got, expected, atol=1e-4, rtol=0)
            step = torch.tensor([[7]])
            assert torch.allclose(lean.decode(batch, step), TransformersDecoder(model).decode(whole, step),
                                  atol=1e-4, rtol=0)
    assert widths == [20, 1, 1, 3, 1]  # the first prompt and a decode step, the repeated one's decode step, ...
    mixed = [first, [70, 71, 72]]  # one row seen whole, one new: only the new one is computed
    with torch.inference_mode():
        got, batch = lean.prefill(mixed, PAD)
        expected, whole = TransformersDecoder(model).prefill(mixed, PAD)
        assert torch.allclose(got, expected, atol=1e-4, rtol=0)
        step = torch.tensor([[7], [8]])
        assert torch.allclose(lean.decode(batch, step), TransformersDecoder(model).decode(whole, step),
                              atol=1e-4, rtol=0)
    assert widths[5] == 3


def test_recent_prompts_are_kept_within_their_token_budget_and_spare_the_personas(monkeypatch):
    monkeypatch.setattr(llama, "RECENT_PROMPT_TOKENS", 50)
    lean, persona = LlamaDecoder(tiny()), list(range(30, 42))
    with torch.inference_mode():
        for first in range(1, 9):
            lean.prefill([persona + [first] * 10], PAD, [len(persona)])
    assert sum(map(len, lean._recent)) <= 50 and len(lean._recent) == 2  # the newest two of 22 tokens
    assert list(lean._prefixes) == [tuple(persona)]


def test_select_drops_the_columns_that_only_padded_the_rows_that_left():
    decoder = LlamaDecoder(tiny())
    with torch.inference_mode():
        _, batch = decoder.prefill([[1] * 9, [2, 3]], PAD)
        batch = decoder.select(batch, [1])
    assert batch.mask.shape == (1, 2) and batch.cache.length == 2 and batch.mask.all()


def test_auto_picks_the_lean_decoder_for_llama_only():
    assert isinstance(make_decoder(tiny()), LlamaDecoder)
    assert isinstance(make_decoder(tiny(), "transformers"), TransformersDecoder)
    mistral = tiny(MistralForCausalLM, MistralConfig)
    assert "mistral" in unsupported_reason(mistral)
    assert isinstance(make_decoder(mistral), TransformersDecoder)
    assert unsupported_reason(tiny(attention_bias=True)) == "projections with bias"
