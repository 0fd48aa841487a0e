"""Constraints (EBNF, regex, choice, JSON schema) -> xgrammar matchers that mask the logits of one batch row."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import torch
import xgrammar as xgr

from .types import Constraint, InvalidConstraint


def choice_to_ebnf(choices: list[str]) -> str:
    """A grammar admitting exactly one of ``choices`` (vLLM's ``choice``)."""
    if not choices or not all(isinstance(c, str) for c in choices):
        raise InvalidConstraint("choice must be a non-empty list of strings")
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


COMPILED_CACHE_BYTES = 64 * 1024 * 1024
# A constraint within the size caps can still be slow to compile (nested bounded repeats: '(.{0,100}x){0,60}' takes
# a second here). Compiling happens on a small pool, and a caller waits this long at most: past it the request is a
# 400, and a compile that has not started is dropped; so slow constraints cost at most COMPILE_THREADS busy threads.
COMPILE_TIMEOUT_S = 10.0
COMPILE_THREADS = 2


class GrammarCompiler:
    """Compiles constraints against one tokenizer; xgrammar caches compiled grammars, so repeats are free."""

    def __init__(self, tokenizer, vocab_size: int, timeout_s: float = COMPILE_TIMEOUT_S):
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._pool = ThreadPoolExecutor(COMPILE_THREADS, thread_name_prefix="grammar-compile")
        self.timeout_s = timeout_s
        # xgrammar keeps compiled grammars for reuse; the cap keeps a stream of distinct ones from growing it for ever
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_limit_bytes=COMPILED_CACHE_BYTES)
        self.vocab_size = vocab_size
        # Tokens that only close something (a string, an object, an array): what a structure near its token budget
        # is steered to, so it ends whole instead of cut off (see close_soon).
        self.closers = torch.tensor([i for i, piece in enumerate(info.decoded_vocab[:vocab_size])
                                     if piece.strip() and not piece.strip().strip(b'"}]')], dtype=torch.long)

    def compile(self, constraint: Constraint) -> xgr.CompiledGrammar:
        """The compiled constraint (cached by xgrammar), or InvalidConstraint if it is invalid or too slow."""
        future = self._pool.submit(self._compile, constraint)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise InvalidConstraint(f"the {constraint.kind} constraint did not compile within {self.timeout_s:g} s: "
                                    "simplify it (fewer nested or bounded repeats)") from None

    def _compile(self, constraint: Constraint) -> xgr.CompiledGrammar:
        try:
            if constraint.kind == "grammar":
                return self._compiler.compile_grammar(str(constraint.value))
            if constraint.kind == "regex":
                return self._compiler.compile_regex(str(constraint.value))
            if constraint.kind == "choice":
                return self._compiler.compile_grammar(choice_to_ebnf(constraint.value))  # type: ignore[arg-type]
            if constraint.kind == "structural_tag":
                return self._compiler.compile_structural_tag(str(constraint.value))
            if constraint.kind == "json":
                schema = constraint.json_schema()
                if schema is None:
                    return self._compiler.compile_builtin_json_grammar()
                return self._compiler.compile_json_schema(json.dumps(schema))
        except InvalidConstraint:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses with a useful message
            raise InvalidConstraint(f"invalid {constraint.kind} constraint: {exc}") from exc
        raise InvalidConstraint(f"unknown constraint kind {constraint.kind!r}")

    @staticmethod
    def matcher(compiled: xgr.CompiledGrammar) -> xgr.GrammarMatcher:
        return xgr.GrammarMatcher(compiled)


def mask_logits(logits: torch.Tensor, matchers: list[xgr.GrammarMatcher | None], vocab_size: int) -> None:
    """Set to -inf, in place, every token a row's grammar does not admit next; rows without a matcher are left be."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    bitmask = xgr.allocate_token_bitmask(logits.shape[0], vocab_size)
    applied = [i for i in rows if matchers[i].fill_next_token_bitmask(bitmask, i)]
    if applied:
        xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size, indices=applied)


CLOSING_BONUS = 1e4  # far above any logit: an admitted closing token always wins, a refused one stays at -inf


def close_soon(logits: torch.Tensor, closers: torch.Tensor) -> None:
    """Favour, in place, the row's closing tokens (and its end-of-sequence tokens, passed in with them): wherever
    its grammar admits one, the structure ends as soon as it may; where none is admitted (a required key, a digit),
    the model goes on choosing."""
    logits[closers] += CLOSING_BONUS
