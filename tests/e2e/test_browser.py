"""Both pages in a real browser against real services on the embedded model."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import SCREENSHOTS

pytestmark = pytest.mark.browser
HOSTILE = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"


def test_expert_chat_streams_keeps_history_and_shows_html_as_text(stack, page):
    page.goto(stack["law"].url)
    page.wait_for_selector("#send:not([disabled])", timeout=120_000)
    assert page.text_content("#name") == "Legal Expert"
    page.fill("#intent", f"{HOSTILE} What is a contract?")
    page.press("#intent", "Enter")
    page.wait_for_selector(".msg.assistant[title]", timeout=300_000)  # title holds the timing once done
    answer = page.text_content(".msg.assistant")
    assert len(answer) > 20 and answer != "…"
    assert page.evaluate("window.__pwned") is None
    assert HOSTILE in page.text_content(".msg.user")
    page.screenshot(path=str(SCREENSHOTS / "expert-chat.png"), full_page=True)

    assert page.is_hidden("#forget-key")  # no key asked for, none kept
    # Markdown goes through marked and DOMPurify: formatting stays, scripts and handlers do not
    rendered = page.evaluate("""() => { const box = document.createElement('div');
        box.append(Conclave.markdown('**bold** <img src=x onerror="window.__pwned = 3"> [x](javascript:alert(1))'));
        document.body.append(box); return box.innerHTML; }""")
    assert "<strong>bold</strong>" in rendered and "onerror" not in rendered and "javascript:" not in rendered
    # parsing the hostile handler (before DOMPurify drops it) is reported as refused by the policy: the CSP at work
    assert all("inline event handler" in p for p in page.problems), page.problems
    page.problems.clear()
    page.reload()
    page.wait_for_selector(".msg.assistant", timeout=30_000)
    assert page.locator(".msg").count() == 2  # the history came back from the server
    page.click("#clear")
    # (not wait_for_function: playwright evaluates its string with eval, which the page's CSP rightly refuses)
    page.wait_for_selector(".msg", state="detached", timeout=30_000)


def test_orchestrator_page_shows_the_live_trace_and_past_runs(stack, page):
    page.goto(stack["orchestrator"].url)
    page.wait_for_selector("#send:not([disabled])", timeout=180_000)
    page.wait_for_selector("#experts .pill.up", timeout=30_000)
    page.fill("#task", f"{HOSTILE} What must a data processing contract contain?")
    page.select_option("#strategy", "panel")
    page.press("#task", "Enter")
    page.wait_for_selector("#live .step details", timeout=300_000)
    page.wait_for_selector("#live .answer", timeout=300_000)
    assert "law_expert" in page.text_content("#live")
    assert page.locator("#live .attribution li").count() >= 1  # who said what
    assert page.evaluate("window.__pwned") is None
    assert "<script>" in page.text_content("#live")
    page.screenshot(path=str(SCREENSHOTS / "orchestrator.png"), full_page=True)
    # the timeline: a lane per consultation (the panel's run in parallel: their bars start together) and the
    # composition, each with its time and tokens
    lanes = page.locator("#live .timeline .lane")
    assert lanes.count() >= 2 and "law_expert" in page.text_content("#live .timeline")
    summary = page.text_content("#live .timeline summary")
    assert " ms" in summary and " in, " in summary and " out" in summary
    starts = page.eval_on_selector_all("#live .timeline .bar:not(.compose)",
                                       "bars => bars.map(b => parseFloat(b.style.left))")
    assert max(starts) - min(starts) < 2, starts  # asked at once: the bars start together (in % of the run)
    page.locator("#live .timeline").screenshot(path=str(SCREENSHOTS / "orchestrator-timeline.png"))

    page.wait_for_selector("#runs li", timeout=30_000)
    page.click("#runs li")
    page.wait_for_selector("#trace .answer", timeout=30_000)
    assert page.evaluate("window.__pwned") is None
