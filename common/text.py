"""Plain-text checks shared by the engine and the orchestrator: loops, sentences, where an answer may end, and the
citation marks ("[2]") an answer's sentences carry.

Small models fall into loops ("1. 2. 3. 4. ...", a sentence again and again, "-1.123-1.123-1.123"). Two signs find
them, both on text whose digits are folded to ``0`` so that counting loops look like repetition:
- a periodic tail: the end of the text repeats a unit of ``p`` characters over a long span;
- low information: a window of text that zlib compresses far better than prose ever does (near-repetition such as
  dates that differ in one digit, which exact periodicity misses).
"""

from __future__ import annotations

import re
import zlib

_DIGITS = re.compile(r"[0-9]")
MAX_PERIOD = 160  # a repeated unit longer than this (a paragraph) is left to the window check
MIN_SPAN = 40  # characters a repetition must cover before it counts: "...", "----" and "1. 2. 3." are fine
WINDOW = 240
# zlib's compressed size over raw size for WINDOW characters. Measured on expert answers of the embedded model:
# prose, lists and code stay above 0.55; loops fall below 0.3.
MIN_COMPRESSION = 0.36
# Where a sentence (or a line) ends: Western punctuation before a space, CJK punctuation, or a line break.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*(?=\s)|(?<=[。！？；])|\n")
_DANGLING_MARKER = re.compile(r"\n\s*(?:\d{1,3}[.)]|[-*•])?\s*$")
_SENTENCE_END = re.compile(r"([.!?][\"')\]]*|[。！？；])\s*$")


def fold_digits(text: str) -> str:
    return _DIGITS.sub("0", text)


def repeated_tail(text: str, max_period: int = MAX_PERIOD, min_span: int = MIN_SPAN) -> int | None:
    """Where the repetition that ends ``text`` begins its second copy, or None when the tail does not loop.

    Cutting the text there keeps one copy of the repeated unit. Cost: about ``max_period`` comparisons when the tail
    does not repeat, so the engine can afford it at every step.
    """
    norm = fold_digits(text)
    n = len(norm)
    for period in range(1, min(max_period, n // 2) + 1):
        span = 0
        while span < n - period and norm[n - 1 - span] == norm[n - 1 - span - period]:
            span += 1
        if span >= max(min_span, period):
            return n - span
    return None


def compression(text: str) -> float:
    data = fold_digits(text).encode()
    return len(zlib.compress(data, 6)) / max(len(data), 1)


def low_information_window(text: str, window: int = WINDOW, stride: int = WINDOW // 4) -> int | None:
    """Start of the first window of ``text`` that compresses like a loop, or None."""
    if len(text) < window:
        return None
    for start in range(0, len(text) - window + 1, stride):
        if compression(text[start: start + window]) < MIN_COMPRESSION:
            return start
    return None


def loop_start(text: str) -> int | None:
    """Where a loop at the end of a text being generated starts, or None: what the engine's guard checks.

    Checked at every step, a repetition is found as soon as it is long enough, so only the tail needs reading:
    the cost per step stays constant however long the answer grows."""
    tail = max(0, len(text) - 3 * MAX_PERIOD)
    at = repeated_tail(text[tail:])
    if at is not None:
        return tail + at
    if len(text) >= WINDOW and compression(text[-WINDOW:]) < MIN_COMPRESSION:
        return len(text) - WINDOW
    return None


def is_degenerate(text: str) -> bool:
    """A whole answer that loops anywhere, repeats one sentence three times, or has no words at all."""
    if not re.search(r"\w{2,}", text):
        return True
    if low_information_window(text) is not None:
        return True
    if any(repeated_tail(text[:end]) is not None for end in _ends(text)):
        return True
    counts: dict[str, int] = {}
    for s in sentences(text):
        key = fold_digits(s.lower())
        if len(key) > 12:
            counts[key] = counts.get(key, 0) + 1
    return any(c >= 3 for c in counts.values())


def _ends(text: str) -> list[int]:
    """Positions worth checking for a loop inside a finished text: every sentence end, and the text's end."""
    return sorted({m.end() for m in _BOUNDARY.finditer(text)} | {len(text)})


_LIST_MARKER = re.compile(r"^(?:\d{1,3}[.)]|[-*•])(?:\s|$)")


def sentences(text: str) -> list[str]:
    """Sentences and list items, stripped; markup-only fragments dropped. A list number ("2.") stays with its item."""
    parts, start = [], 0
    for m in _BOUNDARY.finditer(text):
        parts.append(text[start: m.end()])
        start = m.end()
    parts.append(text[start:])
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if out and re.fullmatch(r"\d{1,3}[.)]", out[-1]):
            out[-1] = f"{out[-1]} {part}"
        elif part:
            out.append(part)
    return [p for p in out if re.search(r"\w", p)]


def join_sentences(parts: list[str]) -> str:
    """Sentences back into text: list items on lines of their own, other sentences run on."""
    text = ""
    for part in parts:
        text += ("\n" if text and _LIST_MARKER.match(part) else " " if text else "") + part
    return text


def sentence_cut(text: str, keep_from: int = 0, words: bool = True) -> int:
    """How much of ``text`` to keep so that it ends with a complete sentence (or line); failing that, at a word
    boundary when ``words``. Never less than ``keep_from``: text a caller has already been sent cannot be taken
    back."""
    text = _DANGLING_MARKER.sub("", text)  # "...\n3." ends with a list number, not a sentence
    if _SENTENCE_END.search(text):
        return max(len(text.rstrip()), keep_from)
    ends = [m.end() for m in _BOUNDARY.finditer(text) if m.end() >= keep_from and text[: m.end()].strip()]
    if ends:
        return max(len(text[: ends[-1]].rstrip()), keep_from)
    space = text.rfind(" ", keep_from) if words else -1
    return space if space > keep_from else keep_from


def ends_a_sentence(text: str) -> bool:
    return bool(_SENTENCE_END.search(text))


CITATION = re.compile(r"\s*\[(\d+)\]")  # a source's number in an answer: "... 72 hours [2]."


def citations(sentence: str) -> list[int]:
    return [int(n) for n in CITATION.findall(sentence)]


def uncited(sentence: str) -> str:
    return CITATION.sub("", sentence).strip()


def cited(sentence: str, numbers: list[int]) -> str:
    """The sentence with these citations inside it, before its full stop, so splitting the answer into sentences
    keeps them."""
    if not numbers:
        return sentence
    body, end = (sentence[:-1], sentence[-1]) if sentence[-1:] in ".!?" else (sentence, "")
    return body + "".join(f" [{n}]" for n in numbers) + end
