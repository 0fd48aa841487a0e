"""The composer's checks and fallback, with a scripted merge and a bag-of-words embedder."""

from __future__ import annotations

from common.protocol import Source, Step
from common.text import is_degenerate
from orchestrator.composer import Composer, cite
from tests.fakes import ScriptedEngine, WordsEmbedder

TASK = "What does the GDPR regulation require of a contract?"
LAW_A = "The GDPR regulation requires a contract. The contract must bind the processor."
LAW_B = "A contract under the regulation binds the processor. Court rulings enforce the regulation."


def answers(*texts: str, expert_names=("law_expert", "other_lawyer", "ai_expert")) -> list[Step]:
    return [Step(expert=name, input=TASK, observation=text) for name, text in zip(expert_names, texts, strict=False)]


def compose(merge: str, steps: list[Step]):
    engine = ScriptedEngine([merge])
    return Composer(engine, WordsEmbedder()).compose(TASK, steps), engine


def test_a_grounded_on_topic_merge_is_used_and_attributed():
    result, engine = compose("The GDPR regulation requires a contract. The contract binds the processor.",
                             answers(LAW_A, LAW_B))
    assert result.merge == "generated" and result.checks.passed and result.checks.grounded_share == 1.0
    assert result.response == "The GDPR regulation requires a contract. The contract binds the processor."
    assert all(set(a.experts) == {"law_expert", "other_lawyer"} for a in result.attribution)
    assert engine.requests[0].loop_guard and engine.requests[0].end_at_sentence


def test_a_merge_cites_what_the_closest_expert_sentence_cites_and_drops_copied_labels():
    def sourced(text: str, title: str) -> Step:
        return Step(expert="law_expert" if "GDPR" in title else "other_lawyer", input=TASK, observation=text,
                    sources=[Source(number=1, document=f"doc_{title}", title=title, chunk=0, score=0.9, cited=True,
                                    text=title)])

    steps = [sourced("The GDPR regulation requires a contract [1]. The contract must bind the processor.", "GDPR"),
             sourced("A contract under the regulation binds the processor [1]. Court rulings enforce the "
                     "regulation.", "Contracts")]
    # the model copies the prompt's label, drops one citation and puts another on the wrong sentence
    result, _ = compose("Expert answer 1: The GDPR regulation requires a contract. A contract under the regulation "
                        "binds the processor. Court rulings enforce the regulation [1].", steps)
    assert result.merge == "generated" and "Expert answer" not in result.response
    sources = cite(result, steps)
    assert [(c.number, c.title, c.expert) for c in sources] == [(1, "GDPR", "law_expert"),
                                                                (2, "Contracts", "other_lawyer")]
    assert result.response == ("The GDPR regulation requires a contract [1]. A contract under the regulation binds "
                               "the processor [2]. Court rulings enforce the regulation.")


def test_a_merge_that_leaves_out_a_sourced_sentence_falls_back_to_the_experts_own():
    sourced = Step(expert="law_expert", input=TASK, observation="The GDPR regulation requires a contract [1]. The "
                   "contract must bind the processor.", sources=[Source(number=1, document="doc_gdpr", title="GDPR",
                                                                        chunk=0, score=0.9, cited=True, text="GDPR")])
    result, _ = compose("The contract binds the processor. A contract under the regulation binds the processor.",
                        [sourced, *answers(LAW_B, expert_names=("other_lawyer",))])
    assert result.merge == "extractive" and "leaves out 1 of the experts' sourced sentences" in result.checks.why
    assert result.response.startswith("The GDPR regulation requires a contract [1].")


def test_a_looping_merge_falls_back_to_the_experts_own_sentences():
    result, _ = compose("1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12. 13. 14. 15. 16. 17. 18. 19. 20. 21. 22.",
                        answers(LAW_A, LAW_B))
    assert result.merge == "extractive" and result.checks.why == "the merge loops"
    assert result.response.startswith("The GDPR regulation requires a contract.") and not is_degenerate(
        result.response)
    assert result.attribution[0].experts == ["law_expert"] and result.attribution[0].steps == [0]


def test_an_off_topic_merge_falls_back():
    result, _ = compose("Neural network model. Machine algorithm software.", answers(LAW_A, LAW_B))
    assert result.merge == "extractive" and "say what an expert said" in result.checks.why


def test_invented_sentences_are_dropped_from_a_merge():
    merged = ("The GDPR regulation requires a contract. The contract binds the processor. Court rulings enforce the "
              "regulation. A contract binds the processor. The GDPR regulation requires a contract of the processor. "
              "Neural networks compute software.")
    result, _ = compose(merged, answers(LAW_A, LAW_B))
    assert result.merge == "generated" and "Neural" not in result.response
    assert result.checks.grounded_share == round(5 / 6, 4)


def test_off_topic_answers_are_left_out_and_loops_cleaned():
    looping = "The GDPR regulation requires a contract. " + "The contract 1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1."
    result, engine = compose("unused", answers(looping, "Neural network machine software models.",
                                               expert_names=("law_expert", "ai_expert")))
    assert result.merge == "extractive" and result.checks.left_out == ["ai_expert"]
    assert result.response == "The GDPR regulation requires a contract." and not engine.requests


def test_extractive_adds_what_another_expert_says_new_and_skips_repeats():
    result, _ = compose("Neural network software.", answers(LAW_A, "The GDPR regulation requires a contract. "
                                                                   "Court rulings enforce the regulation."))
    texts = [a.text for a in result.attribution]
    assert texts.count("The GDPR regulation requires a contract.") == 1
    assert "Court rulings enforce the regulation." in texts


def test_an_answer_from_the_notes_leads_a_free_one_about_as_on_topic():
    sourced = Step(expert="law_expert", input=TASK,
                   observation="The GDPR regulation requires a contract in writing [1].",
                   sources=[Source(number=1, document="gdpr", title="GDPR", chunk=0, score=0.9, cited=True,
                                   text="A processor acts under a contract in writing.")])
    guess = Step(expert="ai_expert", input=TASK, observation="The GDPR regulation requires a contract within days.")
    result, _ = compose("Neural network software.", [guess, sourced])
    relevance = result.checks.expert_relevance
    assert 0 < relevance["ai_expert"] - relevance["law_expert"] <= 0.05  # the guess is a hair more on-topic
    assert result.attribution[0].experts == ["law_expert"]
    assert result.response.startswith("The GDPR regulation requires a contract in writing [1].")
    unsourced = sourced.model_copy(update={"sources": []})  # the same words without notes behind them do not lead
    result, _ = compose("Neural network software.", [guess, unsourced])
    assert result.attribution[0].experts == ["ai_expert"]
    far = guess.model_copy(update={"observation": "The GDPR regulation requires a contract."})
    result, _ = compose("Neural network software.", [far, sourced])  # more on-topic by more than the margin: it leads
    assert result.checks.expert_relevance["ai_expert"] - result.checks.expert_relevance["law_expert"] > 0.05
    assert result.attribution[0].experts == ["ai_expert"]


def test_no_answer_is_said_plainly():
    failed = [Step(expert="law_expert", observation="law_expert did not answer within 5s", ok=False)]
    result, _ = compose("unused", failed)
    assert result.merge == "none" and "did not answer within 5s" in result.response


def test_a_model_whose_merges_keep_failing_stops_paying_for_them_but_tries_again_now_and_then():
    from orchestrator.composer import MERGE_HISTORY

    sourced = Step(expert="law_expert", input=TASK, observation="The GDPR regulation requires a contract [1]. The "
                   "contract must bind the processor.", sources=[Source(number=1, document="doc_gdpr", title="GDPR",
                                                                        chunk=0, score=0.9, cited=True, text="GDPR")])
    steps = [sourced, *answers(LAW_B, expert_names=("other_lawyer",))]
    loses_the_cited_fact = "The contract binds the processor. A contract under the regulation binds the processor."
    engine = ScriptedEngine([loses_the_cited_fact] * (2 * MERGE_HISTORY))
    composer = Composer(engine, WordsEmbedder())
    failed = [composer.compose(TASK, steps) for _ in range(MERGE_HISTORY)]
    assert all("leaves out 1" in r.checks.why for r in failed) and len(engine.requests) == MERGE_HISTORY
    skipped = [composer.compose(TASK, steps) for _ in range(MERGE_HISTORY - 1)]
    assert len(engine.requests) == MERGE_HISTORY  # no generation: the same extractive answer at once, saying why
    assert all(r.merge == "extractive" and r.checks.why.startswith("not merged: the last") for r in skipped)
    assert {r.response for r in skipped} == {r.response for r in failed}
    composer.compose(TASK, steps)
    assert len(engine.requests) == MERGE_HISTORY + 1  # the MERGE_HISTORY-th run tried again


def test_one_passing_merge_among_the_recent_ones_keeps_merging_on():
    from orchestrator.composer import MERGE_HISTORY

    good = "The GDPR regulation requires a contract. The contract binds the processor."
    engine = ScriptedEngine(["Neural networks compute."] * (MERGE_HISTORY - 1) + [good] * (MERGE_HISTORY + 1))
    composer = Composer(engine, WordsEmbedder())
    for _ in range(2 * MERGE_HISTORY):
        composer.compose(TASK, answers(LAW_A, LAW_B))
    assert len(engine.requests) == 2 * MERGE_HISTORY
