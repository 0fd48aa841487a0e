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
        schema = constraint.json_schema()
        return schema is None or jsonschema.Draft202012Validator(schema).is_valid(value)
    matcher = xgr.GrammarMatcher(_compiled(constraint.kind, _as_text(constraint.value)),
                                 terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


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
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[A-Za-z_][A-Za-z0-9_-]*|\{\s*\d+\s*,\s*-?\d+\s*\}|.',
                    re.DOTALL)
_UNBOUNDED = re.compile(r"\{\s*(\d+)\s*,\s*-1\s*\}")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_GBNF_ESCAPES = set("xuUtrn\\\"[]-")  # what llama.cpp's grammar parser reads after a backslash
_CONTROL = {"0": 0, "a": 7, "b": 8, "f": 12, "v": 11, "e": 27}


def _gbnf_escape(match: re.Match) -> str:
    """An escape xgrammar writes and GBNF does not read (``\\?``, ``\\0``...) as the hex escape of its character."""
    char = match.group(1)
    if char in _GBNF_ESCAPES:
        return match.group(0)
    code = _CONTROL.get(char, ord(char))
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def to_gbnf(constraint: Constraint, prefix: str = "") -> str:
    """The constraint as a GBNF grammar for llama.cpp's ``grammar`` field, its rule names prefixed with ``prefix``.

    xgrammar normalises EBNF, regexes, choices and JSON schemas into one rule syntax close to GBNF. What differs is
    rewritten token by token: rule names take '-' for '_'; an unbounded repetition is ``{m,}``, not ``{m, -1}``;
    escapes GBNF does not read, in strings and character classes, become hex escapes; lookahead assertions, which
    GBNF lacks, are dropped (they only narrow what may follow, and the answer is checked against the original
    afterwards)."""
    tokens = _TOKEN.findall(str(_grammar(constraint)))
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "(" and i + 1 < len(tokens) and tokens[i + 1] == "=":
            depth = 0
            while True:
                depth += {"(": 1, ")": -1}.get(tokens[i], 0)
                i += 1
                if depth == 0:
                    break
            continue
        if token == "Regex" and tokens[i + 1: i + 2] == ["("]:
            raise InvalidConstraint("a JSON schema 'pattern' has no GBNF form here; drop the pattern or use a "
                                    "server that takes JSON schemas whole")
        if token[0].isalpha() or token[0] == "_":
            token = prefix + token.replace("_", "-")
        elif token[0] in "[\"":
            token = _ESCAPE.sub(_gbnf_escape, token)
        elif token[0] == "{":
            token = _UNBOUNDED.sub(r"{\1,}", token)
        out.append(token)
        i += 1
    return "".join(out)


def _grammar(constraint: Constraint) -> xgr.Grammar:
    try:
        if constraint.kind == "choice":
            return xgr.Grammar.from_ebnf(choice_to_ebnf(constraint.value))  # type: ignore[arg-type]
        if constraint.kind == "regex":
            return xgr.Grammar.from_regex(_as_text(constraint.value))
        if constraint.kind == "grammar":
            return xgr.Grammar.from_ebnf(_as_text(constraint.value))
        if constraint.kind == "json" and constraint.json_schema() is not None:
            return xgr.Grammar.from_json_schema(json.dumps(constraint.json_schema()), any_whitespace=False)
    except InvalidConstraint:
        raise
    except Exception as exc:  # xgrammar's parse errors say what is wrong
        raise InvalidConstraint(f"invalid {constraint.kind} constraint: {exc}") from exc
    raise InvalidConstraint(f"a {constraint.kind} constraint has no GBNF form")


def tool_calls_gbnf(structural_tag: dict) -> str | None:
    """GBNF admitting the calls a tool-call structural tag admits (``tools.tool_constraint``), or None for ``auto``,
    whose free text plus calls GBNF cannot mark off: such an answer is asked for free and checked afterwards."""
    fmt = structural_tag["format"]
    if fmt["type"] == "triggered_tags":
        return None
    tags = [fmt] if fmt["type"] == "tag" else fmt["tags"]
    rules = []
    for i, tag in enumerate(tags):
        rules.append(f"call{i} ::= {json.dumps(tag['begin'])} call{i}-root {json.dumps(tag['end'])}")
        rules.append(to_gbnf(Constraint("json", tag["content"]["json_schema"]), prefix=f"call{i}-"))
    call = " | ".join(f"call{i}" for i in range(len(tags)))
    several = fmt["type"] == "tags_with_separator" and not fmt.get("stop_after_first")
    root = f"root ::= ({call})" + (f" ({json.dumps(fmt['separator'])} ({call}))*" if several else "")
    return "\n".join([root, *rules])
