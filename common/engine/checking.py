"""Constraints checked on finished text, and grammars rewritten for servers that read GBNF.

A remote server may ignore a constraint it does not understand, or honour it loosely; what it returns is checked here
before it reaches the caller. JSON is checked with ``jsonschema`` (a valid answer may order its keys differently from
the schema, which a grammar would refuse); grammars, regexes and structural tags with xgrammar, so that a remote answer
passes exactly when the local engine could have produced it.
"""

from __future__ import annotations

import functools
import json
import re

import jsonschema
import xgrammar as xgr

from .grammar import choice_to_ebnf
from .types import Constraint, InvalidConstraint

# Compiling against an empty vocabulary gives a matcher that reads characters, not tokens.
_COMPILER = xgr.GrammarCompiler(xgr.TokenizerInfo([]), max_threads=1, cache_limit_bytes=16 << 20)


def satisfies(constraint: Constraint, text: str) -> bool:
    """Whether ``text``, as a whole, is an output the constraint admits."""
    if constraint.kind == "choice":
        return text in constraint.value  # type: ignore[operator]
    if constraint.kind == "json":
        try:
            value = json.loads(text)
        except ValueError:
            return False
        schema = _schema(constraint.value)
        return schema is None or jsonschema.Draft202012Validator(schema).is_valid(value)
    matcher = xgr.GrammarMatcher(_compiled(constraint.kind, _as_text(constraint.value)),
                                 terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


def _schema(value: object) -> dict | None:
    if value in (None, True, {}, "object"):
        return None
    return json.loads(value) if isinstance(value, str) else value  # type: ignore[return-value]


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@functools.lru_cache(maxsize=64)
def _compiled(kind: str, value: str) -> xgr.CompiledGrammar:
    try:
        if kind == "grammar":
            return _COMPILER.compile_grammar(value)
        if kind == "regex":
            return _COMPILER.compile_regex(value)
        if kind == "structural_tag":
            return _COMPILER.compile_structural_tag(value)
    except Exception as exc:  # xgrammar's parse errors say what is wrong
        raise InvalidConstraint(f"invalid {kind} constraint: {exc}") from exc
    raise InvalidConstraint(f"unknown constraint kind {kind!r}")


# ---- GBNF (llama.cpp) -----------------------------------------------------------------------------------------------
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[A-Za-z_][A-Za-z0-9_-]*|.', re.DOTALL)


def to_gbnf(constraint: Constraint) -> str:
    """The constraint as a GBNF grammar for llama.cpp's ``grammar`` field.

    xgrammar normalises EBNF, regexes and choices into one rule syntax, close to GBNF; llama.cpp's rule names take no
    '_', so names are rewritten (strings and character classes are left alone). Lookahead assertions, which GBNF lacks,
    are refused."""
    if constraint.kind == "choice":
        source = xgr.Grammar.from_ebnf(choice_to_ebnf(constraint.value))  # type: ignore[arg-type]
    elif constraint.kind == "regex":
        source = xgr.Grammar.from_regex(_as_text(constraint.value))
    elif constraint.kind == "grammar":
        source = xgr.Grammar.from_ebnf(_as_text(constraint.value))
    else:
        raise InvalidConstraint(f"a {constraint.kind} constraint has no GBNF form")
    tokens = _TOKEN.findall(str(source))
    gbnf = "".join(t.replace("_", "-") if t[0].isalpha() or t[0] == "_" else t for t in tokens)
    if "(=" in gbnf:
        raise InvalidConstraint("the grammar uses a lookahead assertion, which GBNF cannot express")
    return gbnf
