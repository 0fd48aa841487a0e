"""The decoder for a model: the lean Llama forward where it applies, the transformers forward otherwise; and the
weights it runs (dense; 4-bit where the checkpoint is 4-bit and this CPU runs such weights fast; float16 copies for a
float32 engine's few-token steps where fbgemm runs them)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import compiled, fp16, int4
from .decoding import Decoder, TransformersDecoder
from .llama import LlamaDecoder, unsupported_reason

log = logging.getLogger(__name__)


def make_decoder(model, kind: str = "auto", batch_hint: int = 16, weights: str = "dense", source=None,
                 compile_dir: Path | None = None) -> Decoder:
    """``auto``: the lean Llama decoder where it applies (a Llama-architecture model on the CPU), else transformers.

    ``weights`` (the WEIGHTS setting) and ``source`` (the loader's :class:`~common.engine.loading.ModelSource`)
    choose the lean decoder's 4-bit weights (see :func:`four_bit_weights`) or its float16 copies (see
    :func:`half_weights`). With ``compile_dir`` (COMPILE=auto) its few-row decode step is compiled where it runs 4-bit
    weights or float16 copies, the package kept there (:mod:`common.engine.compiled`)."""
    if kind == "transformers":
        return TransformersDecoder(model)
    reason = unsupported_reason(model)
    if reason is not None:
        log.info("using the transformers forward: %s", reason)
        return TransformersDecoder(model)
    quantized = four_bit_weights(model, weights, source)
    decoder = LlamaDecoder(model, batch_hint, quantized, half=not quantized and half_weights(model, weights))
    if compile_dir is not None and (decoder.int4 or decoder.half):
        step = compiled.compile_step(decoder, compile_dir)
        if isinstance(step, str):
            log.info("eager decode step: %s", step)
        else:
            decoder.step = step
    return decoder


def half_weights(model, weights: str) -> bool:
    """Whether the lean decoder keeps float16 copies of its weights for few-token steps (:mod:`common.engine.fp16`).

    ``auto`` (where no 4-bit weights run): on a float32 engine whose torch has fbgemm, the default on CPUs without
    AVX512-BF16; the copies round only the weights' last bits. ``fp16``: the same, or an error where they cannot
    run. ``dense`` and ``int4``: no."""
    if weights not in ("auto", "fp16"):
        return False
    reason = fp16.unsupported_reason(model.dtype)
    if reason and weights == "fp16":
        raise ValueError(f"WEIGHTS=fp16 cannot run here: {reason}")
    if reason:
        log.info("no fp16 weight copies: %s", reason)
    return reason is None


def four_bit_weights(model, weights: str, source=None) -> dict[str, int4.Planes]:
    """The quantized weights the lean decoder runs few-token steps on, by parameter name.

    ``auto``: the checkpoint's own quantized tensors (a GGUF's Q4_0, Q4_1 and Q8_0 ones, as in the embedded model),
    where this CPU and dtype run them faster than dense weights; none otherwise, since quantizing a float checkpoint
    changes its answers. ``int4``: those, or else every linear quantized to 4-bit groups (speed over fidelity).
    ``dense``: none."""
    if weights in ("dense", "fp16"):
        return {}
    if weights == "int4" and model.dtype != int4.ACTIVATION_DTYPE:
        raise ValueError(f"WEIGHTS=int4 needs DTYPE=bfloat16 (the engine runs {model.dtype})")
    if weights == "auto" and (reason := int4.unsupported_reason(model.dtype)):
        log.info("dense weights: %s", reason)
        return {}
    params = model.state_dict()  # tied weights too (the head), which named_parameters() lists once
    groups = int4.read_gguf(Path(source.path) / source.gguf_file, model.config) if source and source.gguf_file else {}
    for name, group in list(groups.items()):  # a file whose tensors are not this model's weights is not run
        if not torch.allclose(int4.dequantize(group).to(model.dtype), params[name], rtol=2**-7, atol=1e-6):
            log.warning("dense weights for %s: its 4-bit tensor in the GGUF file differs from the loaded weight", name)
            del groups[name]
    if not groups and weights == "int4":
        groups = {name: [int4.Int4Groups.quantize(params[name])] for name in int4.linear_names(model.config)}
    log.info("quantized weights for %d linears" if groups else "dense weights: the checkpoint has no quantized "
             "linears", len(groups))
    return groups
