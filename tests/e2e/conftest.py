"""Browser tier: Debian's chromium driven by playwright against real services (make e2e-browser)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.services import expert, orchestrator_service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A page that fails its test if anything it loads breaks the Content-Security-Policy or throws."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "Content Security" in m.text
            else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.problems = problems  # a test that provokes the policy on purpose takes its own reports off
    yield page
    context.close()
    assert not problems, problems


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    law = expert("law_expert", tmp_path_factory.mktemp("law")).start()
    orch = orchestrator_service(tmp_path_factory.mktemp("orch"), [law.url]).start()
    SCREENSHOTS.mkdir(exist_ok=True)
    yield {"law": law, "orchestrator": orch}
    orch.stop()
    law.stop()
