"""Quantized weights executed as quantized: group-wise int4 linears on torch's CPU kernel.

A decode step of one row reads every weight once, so on a CPU its time is mostly the bytes of the weights read. The
embedded checkpoint ships its linears as Q4_1 (groups of 32 values, each ``scale * q + minimum`` with q in 0..15) and
its embedding, which is also its output head, as Q8_0 (``scale * q``, q in -128..127). De-quantized to bfloat16 they
are read as 2 bytes a value; ``torch._weight_int4pack_mm_for_cpu`` multiplies bfloat16 activations by 4-bit groups
directly, a little over half a byte a value. An 8-bit weight is run as two 4-bit planes, its high and its low
nibbles, whose products add up to exactly the 8-bit one: a quarter of the dense bytes read twice, still half.

The kernel is fast where the CPU has AVX512 and the activations are bfloat16; with float32 activations or on AVX2 it
is many times slower than a dense matmul, so the engine uses it only where it pays (:func:`unsupported_reason`).
Its per-group scales and zero points are bfloat16, so those round; the quantized values are the checkpoint's own.
It computes each row on its own, so a row's result does not depend on the rows batched with it.
Measured in ``make bench``: decode speed against llama.cpp (bench/speed.py), top-1 agreement with float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

GROUP = 32  # values per group: the GGUF Q4/Q8 formats' block, one of the kernel's group sizes
ACTIVATION_DTYPE = torch.bfloat16  # what the kernel multiplies the 4-bit weights by
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
HEAD = "lm_head.weight"


def linear_names(config) -> list[str]:
    """The parameter names of a Llama model's linears inside its layers (the embedding and head are not here)."""
    return [f"model.layers.{i}.{linear}.weight" for i in range(config.num_hidden_layers) for linear in LINEARS]


@dataclass
class Int4Groups:
    """A 4-bit plane of weights [out, in], in groups of :data:`GROUP` along the input: ``scale * q + minimum``."""

    q: torch.Tensor  # [out, in], uint8 in 0..15 (a byte a value while loading; packed two a byte to run)
    scale: torch.Tensor  # [out, in / GROUP], float32
    minimum: torch.Tensor  # [out, in / GROUP], float32

    def dequantize(self) -> torch.Tensor:
        out, inner = self.q.shape
        groups = self.q.view(out, inner // GROUP, GROUP).float()
        return (groups * self.scale[..., None] + self.minimum[..., None]).view(out, inner)

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Int4Groups:
        """Min-max 4-bit groups of a float weight, as llama.cpp's Q4_1 makes them (this changes the weights)."""
        out, inner = weight.shape
        groups = weight.detach().float().view(out, inner // GROUP, GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = (high - low) / 15
        q = ((groups - low[..., None]) / scale.clamp(min=1e-20)[..., None]).round().clamp(0, 15)
        return cls(q.to(torch.uint8).view(out, inner), scale, low)

    @classmethod
    def stacked(cls, parts: list[Int4Groups]) -> Int4Groups:
        """Weights fused along the output, as the lean decoder fuses q/k/v and gate/up."""
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("q", "scale", "minimum")))


Planes = list[Int4Groups]  # a weight is the sum of its planes: one for 4-bit, two for 8-bit


def dequantize(planes: Planes) -> torch.Tensor:
    return sum(p.dequantize() for p in planes)


def eight_bit_planes(q: torch.Tensor, scale: torch.Tensor) -> Planes:
    """``scale * q`` for q in -128..127 as two 4-bit planes: q + 128 = 16 * high + low, so
    ``scale * q = 16 * scale * high - 128 * scale + scale * low``; every scale and zero point is the group's scale
    times a power of two, so the split adds no rounding of its own."""
    unsigned = (q.to(torch.int16) + 128).to(torch.uint8)
    return [Int4Groups(unsigned >> 4, 16 * scale, -128 * scale), Int4Groups(unsigned & 15, scale, 0 * scale)]


def fits(planes: Planes) -> bool:
    """Whether the kernel takes weights of this shape (its packing needs outputs in sixteens, inputs in groups)."""
    out, inner = planes[0].q.shape
    return out % 16 == 0 and inner % GROUP == 0


class Int4Linear:
    """``x @ W.T`` for bfloat16 ``x`` and ``W`` given as planes (see :func:`fits`), through torch's int4 CPU kernel."""

    def __init__(self, planes: Planes):
        self.out_features = planes[0].q.shape[0]
        self.planes = []
        for p in planes:
            packed = torch._convert_weight_to_int4pack_for_cpu(p.q.to(torch.int32), 1)
            zero = p.minimum + 8 * p.scale  # the kernel computes (q - 8) * scale + zero
            scales_and_zeros = torch.stack([p.scale.t(), zero.t()], dim=-1).to(ACTIVATION_DTYPE).contiguous()
            self.planes.append((packed, scales_and_zeros))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return int4_matmul(x, self.planes, self.out_features)


def int4_matmul(x: torch.Tensor, planes: list[tuple[torch.Tensor, torch.Tensor]], out_features: int) -> torch.Tensor:
    """``x @ W.T`` for W the sum of packed planes (4-bit values, scales and zero points) of :class:`Int4Linear`."""
    flat = x.reshape(-1, x.shape[-1])
    y = None
    for packed, scales_and_zeros in planes:
        part = torch._weight_int4pack_mm_for_cpu(flat, packed, GROUP, scales_and_zeros)
        y = part if y is None else y + part
    return y.view(*x.shape[:-1], out_features)


def unsupported_reason(dtype: torch.dtype) -> str | None:
    """Why quantized weights would not be faster here, or None when they are."""
    if dtype != ACTIVATION_DTYPE:
        return f"the int4 kernel is fast with bfloat16 activations only, and the engine runs {dtype}"
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.startswith(("AVX512", "AMX")):
        return f"the int4 kernel is slow without AVX512 (this CPU: {capability})"
    return None


def read_gguf(path: Path, config) -> dict[str, Planes]:
    """The quantized linears (Q4_0, Q4_1, Q8_0) of a Llama GGUF file and its head, by transformers parameter name.

    Norms and the input embedding are not returned: they stay as the loader de-quantized them. Q and K are stored
    permuted for llama.cpp's rotary layout; their rows are put back as transformers' own GGUF loader does."""
    from gguf import GGML_QUANT_SIZES, MODEL_ARCH, GGMLQuantizationType, GGUFReader, get_tensor_name_map
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    readers = {GGMLQuantizationType.Q4_0: _q4_0, GGMLQuantizationType.Q4_1: _q4_1, GGMLQuantizationType.Q8_0: _q8_0}
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    unpermute = LlamaTensorProcessor({"num_attention_heads": config.num_attention_heads,
                                      "num_key_value_heads": config.num_key_value_heads})
    wanted = {name: f"{names.get_name(name.removesuffix('.weight'))}.weight" for name in linear_names(config)}
    head = "output.weight"
    if head not in tensors and getattr(config, "tie_word_embeddings", False):
        head = "token_embd.weight"  # a tied head is the embedding
    wanted[HEAD] = head
    found = {}
    for hf_name, gguf_name in wanted.items():
        tensor = tensors.get(gguf_name)
        if tensor is None or tensor.tensor_type not in readers:
            continue
        data = np.asarray(tensor.data)
        blocks = data.reshape(data.shape[0], -1, GGML_QUANT_SIZES[tensor.tensor_type][1])
        parts = [torch.from_numpy(np.ascontiguousarray(unpermute.process(p, gguf_name).weights))
                 for p in readers[tensor.tensor_type](blocks)]
        parts[0] = parts[0].reshape(parts[0].shape[0], -1)  # [out, groups, 32] -> [out, in]
        found[hf_name] = (eight_bit_planes(*parts) if tensor.tensor_type == GGMLQuantizationType.Q8_0
                          else [Int4Groups(*parts)])
    return found


def _scale(blocks: np.ndarray, at: int) -> np.ndarray:
    return blocks[..., at: at + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """A block's 16 bytes -> its 32 values: low nibbles are values 0-15, high nibbles values 16-31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _q4_1(blocks: np.ndarray) -> tuple[np.ndarray, ...]:
    return _nibbles(blocks[..., 4:]), _scale(blocks, 0), _scale(blocks, 2)


def _q4_0(blocks: np.ndarray) -> tuple[np.ndarray, ...]:
    scale = _scale(blocks, 0)
    return _nibbles(blocks[..., 2:]), scale, -8 * scale


def _q8_0(blocks: np.ndarray) -> tuple[np.ndarray, ...]:
    return blocks[..., 2:].copy().view(np.int8), _scale(blocks, 0)
