"""Quantized weights run as quantized: the planes hold the checkpoint's values exactly, the int4 kernel computes what
a dense matmul on those values computes, and the lean decoder on them still computes the model's forward.

tests/integration/test_engine.py checks the same on the embedded GGUF (its own Q4_1 and Q8_0 tensors)."""

from __future__ import annotations

import logging

import pytest
import torch

from common.engine import int4
from common.engine.decoders import four_bit_weights
from common.engine.decoding import TransformersDecoder
from common.engine.llama import INT4_MAX_TOKENS, LlamaDecoder
from tests.unit.test_decoders import FEED, run_script, tiny


def test_eight_bit_weights_split_into_two_four_bit_planes_without_loss():
    torch.manual_seed(0)
    q = torch.randint(-128, 128, (16, 64), dtype=torch.int32)
    scale = torch.rand(16, 2) / 10
    planes = int4.eight_bit_planes(q, scale)
    assert all(int(p.q.min()) >= 0 and int(p.q.max()) <= 15 for p in planes)
    expected = q.view(16, 2, 32).float() * scale[..., None]
    assert torch.allclose(int4.dequantize(planes), expected.view(16, 64), rtol=0, atol=1e-5)  # float32 rounding only


def test_quantizing_four_bit_values_again_gives_them_back():
    torch.manual_seed(0)
    groups = int4.Int4Groups.quantize(torch.randn(16, 64))
    again = int4.Int4Groups.quantize(groups.dequantize())
    assert torch.equal(again.q, groups.q)
    assert torch.allclose(again.dequantize(), groups.dequantize(), atol=1e-6)


def test_the_kernel_computes_the_dense_product_of_the_planes_row_by_row():
    torch.manual_seed(0)
    planes = int4.eight_bit_planes(torch.randint(-128, 128, (64, 96), dtype=torch.int32), torch.rand(64, 3) / 50)
    linear = int4.Int4Linear(planes)
    x = torch.randn(5, 96, dtype=torch.bfloat16)
    dense = x.float() @ int4.dequantize(planes).T
    got = linear(x)
    assert got.dtype == torch.bfloat16 and got.shape == (5, 64)
    assert torch.allclose(got.float(), dense, atol=0.05, rtol=0.02), (got.float() - dense).abs().max()
    alone = torch.cat([linear(x[i: i + 1]) for i in range(5)])
    assert torch.equal(alone, got)  # a row's result does not depend on the rows batched with it


def quantized_tiny():
    """A tiny Llama in bfloat16 whose linears and head hold 4-bit values, and those values as planes."""
    model = tiny()
    names = [*int4.linear_names(model.config), int4.HEAD]
    params = model.state_dict(keep_vars=True)
    planes = {}
    with torch.no_grad():
        for name in names:
            planes[name] = [int4.Int4Groups.quantize(params[name])]
            params[name].copy_(planes[name][0].dequantize())
    return model.to(torch.bfloat16), planes


def test_the_lean_decoder_on_four_bit_weights_computes_the_models_forward():
    model, planes = quantized_tiny()
    lean = LlamaDecoder(model, batch_hint=4, quantized=planes)
    assert lean.int4 and lean.layers[0].qkv.int4 is not None
    assert lean.head.int4 is None  # a vocabulary of 97 does not pack in sixteens: that head stays dense
    reference = run_script(TransformersDecoder(model), FEED)
    got = run_script(lean, FEED)
    # the script decodes 3 rows (the 4-bit path) and 5 rows (the dense one); both must match
    assert min(len(t) for t in FEED["a"]) <= INT4_MAX_TOKENS < max(len(t) for t in FEED["merged"])
    for ref, step in zip(reference, got, strict=True):
        assert torch.allclose(step, ref, atol=5e-2, rtol=0), (step - ref).abs().max()


def test_weights_setting(caplog):
    model = tiny()  # float32: the int4 kernel is slow there
    assert four_bit_weights(model, "dense") == {}
    with caplog.at_level(logging.INFO):
        assert four_bit_weights(model, "auto") == {}
    assert "bfloat16 activations only" in caplog.text
    with pytest.raises(ValueError, match="WEIGHTS=int4 needs DTYPE=bfloat16"):
        four_bit_weights(model, "int4")
    forced = four_bit_weights(model.to(torch.bfloat16), "int4")  # no GGUF: every linear quantized
    assert set(forced) == set(int4.linear_names(model.config))


def test_auto_runs_only_where_the_kernel_pays(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert "slow without AVX512" in int4.unsupported_reason(torch.bfloat16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert int4.unsupported_reason(torch.bfloat16) is None
    assert int4.unsupported_reason(torch.float32) is not None
