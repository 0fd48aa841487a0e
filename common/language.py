"""The language a text is written in, by py3langid (a maintained langid.py port whose model ships in its wheel)."""

from __future__ import annotations

import functools

NAMES = {"en": "English", "zh": "Chinese", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian",
         "pt": "Portuguese", "nl": "Dutch", "ru": "Russian", "ja": "Japanese", "ko": "Korean", "ar": "Arabic"}
# Below this probability the guess is noise: langid reads "second" as Italian (0.15) and "Hello" as Breton (0.06),
# while full questions score 0.6 to 0.95 (Chinese, Spanish, English ones measured).
CONFIDENT = 0.4


@functools.cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier  # its model loads here, in about a second

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect(text: str) -> str:
    """An ISO 639-1 code; English where the text is too short or too mixed to tell."""
    code, probability = _identifier().classify(text)
    return code if probability >= CONFIDENT else "en"


def name(code: str) -> str:
    return NAMES.get(code, code)
