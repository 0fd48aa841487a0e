"""Float16 copies of a float32 engine's weights (WEIGHTS=auto where no 4-bit weights run, or WEIGHTS=fp16): fbgemm's
kernel computes the product of the rounded weights, and the lean decoder on them still computes the model's forward.

bench/weights.py measures them on the embedded model (top-1 agreement with float32 and speed)."""

from __future__ import annotations

import pytest
import torch

from common.engine import fp16
from common.engine.decoders import half_weights, make_decoder
from common.engine.decoding import TransformersDecoder
from tests.unit.test_decoders import FEED, run_script, tiny

pytestmark = pytest.mark.skipif(fp16.unsupported_reason(torch.float32) is not None,
                                reason=str(fp16.unsupported_reason(torch.float32)))


def test_the_kernel_computes_the_product_of_the_weights_rounded_to_float16():
    torch.manual_seed(0)
    weight, x = torch.randn(48, 96) / 10, torch.randn(5, 2, 96)
    got = fp16.Fp16Linear(weight)(x)
    assert got.dtype == torch.float32 and got.shape == (5, 2, 48)
    expected = x @ weight.half().float().T
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()


def test_the_lean_decoder_on_float16_copies_computes_the_models_forward():
    model = tiny()
    lean = make_decoder(model, weights="auto", batch_hint=4)
    assert lean.half and not lean.int4 and lean.layers[0].qkv.half is not None and lean.head.half is not None
    reference = run_script(TransformersDecoder(model), FEED)
    got = run_script(lean, FEED)
    # the script decodes 3 rows (the float16 copies) and 5 rows (the dense weights); both must match
    assert min(len(t) for t in FEED["a"]) <= fp16.MAX_TOKENS < max(len(t) for t in FEED["merged"])
    for ref, step in zip(reference, got, strict=True):
        assert torch.allclose(step, ref, atol=1e-2, rtol=0), (step - ref).abs().max()


def test_weights_setting():
    model = tiny()
    assert half_weights(model, "auto") and half_weights(model, "fp16")
    assert not half_weights(model, "dense") and not half_weights(model, "int4")
    assert not make_decoder(model, weights="dense").half
    bf16 = model.to(torch.bfloat16)  # bfloat16 engines run 4-bit weights or dense ones, never these copies
    assert not half_weights(bf16, "auto")
    with pytest.raises(ValueError, match="WEIGHTS=fp16 cannot run here"):
        half_weights(bf16, "fp16")


def test_without_fbgemm_there_are_no_copies(monkeypatch):
    monkeypatch.setattr(fp16, "has_fbgemm", lambda: False)
    assert "fbgemm" in fp16.unsupported_reason(torch.float32)
    assert not half_weights(tiny(), "auto")
