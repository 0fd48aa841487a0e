"""Half-precision copies of float32 weights for few-token steps, on fbgemm's fp16 kernel.

On a CPU without AVX512 the engine runs float32 (no fast bfloat16 there), and a one-row decode step reads every weight
once, 4 bytes a value: its time is mostly those bytes. fbgemm's fp16 GEMM reads the weights as float16, 2 bytes a
value, and multiplies them by the float32 activations in float32: half the bytes, and rounding only in the weights'
last bits (teacher-forced over the bench's 2,431 tokens the embedded model picks float32's next token 99.9% of the
time on them). It loses to oneDNN's float32 matmul once many rows share each weight read (a prefill, a wide batch),
so those keep the dense copy (``bench/weights.py`` measures both sides on the embedded model).
"""

from __future__ import annotations

import torch

# A projection of at most this many tokens runs on the fp16 copy. Measured on a 2-core AVX2 EPYC (bare greedy decode
# of the embedded model, float32 dense = 1): 1.44x at 1 row, 1.41x at 2, 1.36x at 4, 1.08x at 8; in the projections
# alone 0.95x at 8 and 0.74x at 32 tokens.
MAX_TOKENS = 4


def unsupported_reason(dtype: torch.dtype) -> str | None:
    """Why fp16 copies of the weights would not run here, or None when they do."""
    if dtype != torch.float32:
        return f"fp16 weight copies serve float32 engines, and the engine runs {dtype}"
    if not has_fbgemm():
        return "torch has no fbgemm here (it is built for x86-64 only)"
    return None


def has_fbgemm() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


class Fp16Linear:
    """``x @ W.T`` for float32 ``x``, with ``W`` kept as float16 in fbgemm's packed layout."""

    def __init__(self, weight: torch.Tensor):
        self.out_features = weight.shape[0]
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(), None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic_fp16(x.reshape(-1, x.shape[-1]), self.packed)
        return y.view(*x.shape[:-1], self.out_features)

    def unpacked(self) -> torch.Tensor:
        """The float16 weights as a plain tensor [out, in] (a new copy: the packed layout is fbgemm's own)."""
        weight, _ = torch.ops.quantized.linear_unpack_fp16(self.packed)
        return weight.half()
