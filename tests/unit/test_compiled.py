"""The compiled decode step's graph computes what the eager step does, for one row and for a few; when it is not
used, the decoder keeps its eager step and says why.

The compiled step itself is exercised on the embedded model (tests/integration/test_engine.py, where the CPU runs
4-bit weights or float16 copies); here a tiny Llama stands in: its step's graph is run eagerly, and the compile is
made to fail or to disagree.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from common.engine import compiled, fp16, int4
from common.engine.decoders import make_decoder
from common.engine.llama import LlamaDecoder

PROMPT = [[5, 6, 7, 8, 9]]
ROWS = [[5, 6, 7, 8, 9], [40, 41], [12, 30, 31, 32, 33, 34, 35]]  # of unlike lengths, so two are padded


def tiny_bf16() -> LlamaForCausalLM:
    """A tiny Llama whose every linear, the head too, has a shape the int4 kernel takes."""
    return tiny_f32().to(torch.bfloat16)


def tiny_f32() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def four_bit(model) -> LlamaDecoder:
    """The lean decoder on 4-bit copies of every linear and the head, as it runs a Q4 GGUF's."""
    params = model.state_dict()
    names = [*int4.linear_names(model.config), int4.HEAD]
    return LlamaDecoder(model, quantized={name: [int4.Int4Groups.quantize(params[name])] for name in names})


def decodes(decoder) -> bool:
    with torch.inference_mode():
        logits, batch = decoder.prefill(PROMPT, pad_id=0)
        return bool(torch.isfinite(decoder.decode(batch, logits.argmax(-1, keepdim=True))).all())


def greedy(decoder, prompts=PROMPT, steps: int = 6) -> tuple[list[list[int]], list[torch.Tensor]]:
    tokens, all_logits = [], []
    with torch.inference_mode():
        logits, batch = decoder.prefill(prompts, pad_id=0, remember=False)
        for _ in range(steps):
            token = logits.argmax(-1, keepdim=True)
            tokens.append(token[:, 0].tolist())
            logits = decoder.decode(batch, token)
            all_logits.append(logits)
    return tokens, all_logits


@pytest.mark.parametrize(("weights", "prompts"), [("int4", PROMPT), ("int4", ROWS), pytest.param(
    "fp16", PROMPT, marks=pytest.mark.skipif(bool(fp16.unsupported_reason(torch.float32)),
                                             reason="no fbgemm in this torch"))])
def test_the_steps_graph_decodes_as_the_eager_step(weights, prompts):
    """The module that is exported, run eagerly in its place: the same tokens, logits equal to rounding (the
    graph sums float16 products in its own order, and attends over the new token apart); on 4-bit weights for a
    batch of rows too, padding masked."""
    decoder = four_bit(tiny_bf16()) if weights == "int4" else make_decoder(tiny_f32(), weights="fp16")
    assert compiled.unavailable_reason(decoder) is None
    tokens, expected = greedy(decoder, prompts)
    decoder.step = compiled._Step.of(decoder).eval()
    assert decoder.step.max_rows >= len(prompts)  # the batch runs the graph, not the eager step beside it
    tokens_of_the_graph, logits_of_the_graph = greedy(decoder, prompts)
    assert tokens_of_the_graph == tokens
    for want, got in zip(expected, logits_of_the_graph, strict=True):
        assert float((want - got).abs().max()) <= 0.02 * float(want.abs().max())


class NarrowStep:
    """A step that takes two rows and fails if called: a wider batch must not reach it."""

    max_rows = 2

    def __call__(self, *inputs):
        raise AssertionError("a batch wider than the compiled step was given to it")


def test_rows_the_step_takes_by_weights_and_a_wider_batch_runs_eager():
    decoder = four_bit(tiny_bf16())
    assert compiled._Step.of(decoder).max_rows == compiled.MAX_ROWS
    assert compiled._Step.of(make_decoder(tiny_f32(), weights="fp16")).max_rows == 1
    expected, _ = greedy(decoder, ROWS)
    decoder.step = NarrowStep()
    assert greedy(decoder, ROWS)[0] == expected


def test_dense_weights_keep_the_eager_step(tmp_path):
    # int4 quantizes a float checkpoint's linears, not its head; float32 on dense weights has no float16 copies
    for model, weights in ((tiny_bf16, "dense"), (tiny_bf16, "int4"), (tiny_f32, "dense")):
        decoder = make_decoder(model(), weights=weights, compile_dir=tmp_path)
        assert decoder.step is None
        assert "dense" in compiled.compile_step(decoder, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was compiled


def test_a_failed_compile_keeps_the_eager_step(tmp_path, monkeypatch):
    def no_compiler(*args):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(compiled, "_package", no_compiler)
    decoder = four_bit(tiny_bf16())
    assert compiled.compile_step(decoder, tmp_path) == "compile failed: RuntimeError"
    assert decoder.step is None
    assert decodes(decoder)


class WrongRunner:
    """A loaded package whose step returns logits unlike the eager step's."""

    def get_constant_fqns(self):
        return []

    def load_constants(self, constants, **kw):
        pass

    def __call__(self, ids, cos, sin, keys, values, bias):
        layers, _, heads, _, dim = keys.shape
        new = torch.zeros(layers, 1, heads, 1, dim)
        return torch.arange(96, dtype=torch.bfloat16)[None], new, new


def test_a_compiled_step_that_disagrees_with_the_eager_one_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setattr(compiled, "_package", lambda *args: tmp_path / "step.pt2")
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path: WrongRunner())
    decoder = four_bit(tiny_bf16())
    assert "differ from the eager step's" in compiled.compile_step(decoder, tmp_path)
    assert decoder.step is None
    assert decodes(decoder)


class FailingProcess:
    """A compile process that exits non-zero, counting how often one is started."""

    started = 0

    def __init__(self, **kw):
        pass

    def start(self):
        FailingProcess.started += 1

    def join(self):
        self.exitcode = 1


def test_a_compile_that_failed_is_not_tried_again_at_every_start(tmp_path, monkeypatch):
    monkeypatch.setattr(compiled.multiprocessing, "get_context", lambda method: type("Ctx", (), {
        "Process": FailingProcess}))
    monkeypatch.setattr(torch._inductor.cpp_builder, "get_cpp_compiler", lambda: "g++")
    module = compiled._Step.of(four_bit(tiny_bf16()))
    for expected in ("the compile process failed", "an earlier compile of this step failed"):
        with pytest.raises(RuntimeError, match=expected):
            compiled._package(module, tmp_path)
    assert FailingProcess.started == 1
    assert len(list((tmp_path / "compiled").glob("*.failed"))) == 1
