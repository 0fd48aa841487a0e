"""Loop detection, sentence splitting and sentence-boundary cuts (common/text.py)."""

from __future__ import annotations

import pytest

from common.text import is_degenerate, join_sentences, loop_start, sentence_cut, sentences

PROSE = ("Gradient descent is an optimisation algorithm used in machine learning. It moves the parameters against the "
         "gradient of the loss. The learning rate sets the step size; too large a rate makes training diverge, while "
         "too small a rate slows it down. Stochastic variants use mini-batches of the training data.")
LOOPS = [
    "The answer is 1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12. 13. 14. 15. 16. 17. 18. 19. 20. 21. 22.",
    "2023-01-22 20:23:32.123-1.123-1.123-1.123-1.123-1.123-1.123-1.123-1.123-1.123-1.123-1.123",
    "I'm glad to see that you're taking a proactive approach to this. " * 3,
    "2023-12-48.67.59.2023-DGPR: 2023-12-12.22.22.2023-GDPR: 2023-11-12.21.22.2023-GDPR " * 3,
]
FINE = [
    PROSE,
    "1. Lawfulness, fairness and transparency.\n2. Purpose limitation.\n3. Data minimisation.\n4. Accuracy.\n"
    "5. Storage limitation.\n6. Integrity and confidentiality.\n7. Accountability.",
    "def f(x):\n    return x + 1\n\ndef g(x):\n    return x + 2\n\ndef h(x):\n    return x + 3\n",
    "机器学习是人工智能的一个分支，它让计算机从数据中学习规律，而不是依靠明确编写的规则。常见的方法包括监督学习、无监督学习和强化学习。",
    "Wait... what? Yes!!! It works --- mostly.",
]


@pytest.mark.parametrize("text", LOOPS)
def test_loops_are_found_and_cut_after_one_copy(text):
    assert is_degenerate(text)
    at = loop_start(text)
    assert at is not None and not is_degenerate(text[:at] + " Done.")


@pytest.mark.parametrize("text", FINE)
def test_prose_lists_code_and_chinese_are_not_loops(text):
    assert loop_start(text) is None and not is_degenerate(text)


def test_no_words_is_degenerate():
    assert is_degenerate("... --- ...") and is_degenerate("")


def test_sentences_keep_list_numbers_with_their_items_and_split_chinese():
    text = "The principles:\n1. Lawfulness.\n2. Purpose limitation. More text here."
    assert sentences(text) == ["The principles:", "1. Lawfulness.", "2. Purpose limitation.", "More text here."]
    assert join_sentences(sentences(text)) == "The principles:\n1. Lawfulness.\n2. Purpose limitation. More text here."
    assert sentences("第一句。第二句！") == ["第一句。", "第二句！"]


def test_sentence_cut_ends_at_the_last_complete_sentence_never_before_what_was_sent():
    text = "It is a fact. Another sentence that is cut off in the mid"
    assert text[: sentence_cut(text)] == "It is a fact."
    assert text[: sentence_cut(text, keep_from=20)] == "It is a fact. Another sentence that is cut off in the"
    assert sentence_cut("Complete.") == len("Complete.")
    assert sentence_cut("No sentence ends here", words=False) == 0  # while streaming: wait for a full stop
    listed = "Overfitting hurts.\n3."
    assert listed[: sentence_cut(listed)] == "Overfitting hurts."  # a list number alone does not end a sentence
    lines = "Line one\nline two cut"
    assert lines[: sentence_cut(lines)] == "Line one"  # a line break ends a line as a full stop ends a sentence
