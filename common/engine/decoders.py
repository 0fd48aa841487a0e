"""The decoder for a model: the lean Llama forward where it applies, the transformers forward otherwise."""

from __future__ import annotations

import logging

from .decoding import Decoder, TransformersDecoder
from .llama import LlamaDecoder, unsupported_reason

log = logging.getLogger(__name__)


def make_decoder(model, kind: str = "auto", batch_hint: int = 16) -> Decoder:
    """``auto``: the lean Llama decoder where it applies (a Llama-architecture model on the CPU), else transformers."""
    if kind == "transformers":
        return TransformersDecoder(model)
    reason = unsupported_reason(model)
    if reason is None:
        return LlamaDecoder(model, batch_hint)
    log.info("using the transformers forward: %s", reason)
    return TransformersDecoder(model)
