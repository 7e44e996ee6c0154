"""The browser chat UI at / in a real headless Chromium (Debian's `chromium` driven by Playwright): a question
typed, tokens streaming into the page, reasoning folded, the conversation kept across a reload."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.server.conftest import API_KEY


def test_page_is_served_without_the_key_and_is_self_contained(server):
    r = httpx.get(server["url"] + "/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    # relative: under a proxy's prefix (--root-path) the page calls the API under the same prefix
    # model text is only ever set as text
    assert 'fetch(API + "v1/chat/completions"' in html and "innerHTML" not in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # nothing fetched outside
    assert httpx.get(server["url"] + "/v1/models", timeout=30).status_code == 401  # the API itself stays closed


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_a_question_streams_into_the_page(server, browser, tmp_path):
    page = browser.new_page()
    page.goto(server["url"] + "/")
    page.click("#settings summary")
    page.fill("#api_key", API_KEY)
    page.dispatch_event("#api_key", "change")
    page.wait_for_function("() => document.getElementById('model').textContent.startsWith('model: tiny')")
    page.fill("#max_tokens", "48")
    page.dispatch_event("#max_tokens", "change")
    page.evaluate("""() => {  // count how often the answer's text changes while it arrives
        window.updates = 0;
        new MutationObserver(() => window.updates++).observe(document.getElementById('messages'),
            {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#input", "Say something.")
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg.user")
    page.wait_for_function("() => document.getElementById('stop').hidden === false || window.updates > 0")
    page.wait_for_function("() => document.getElementById('send').hidden === false", timeout=60_000)  # finished
    assert page.evaluate("() => window.updates") > 5  # streamed: many small updates, not one
    reasoning = page.locator(".msg.assistant details.reasoning").first
    assert reasoning.count() == 1 and reasoning.evaluate("d => d.open") is False  # folded once done
    assert len(reasoning.inner_text()) > 0
    assert "tokens/s" in page.locator(".msg.assistant .stats").inner_text()
    page.screenshot(path=str(tmp_path / "chat.png"))
    assert (tmp_path / "chat.png").stat().st_size > 10_000

    page.reload()  # conversations stay in the browser
    page.wait_for_selector("#conversations li")
    assert page.locator("#conversations li span").inner_text() == "Say something."
    page.click("#conversations li")
    assert page.locator(".msg.user").inner_text() == "Say something."


def test_thinking_off_and_errors_show(server, browser):
    page = browser.new_page()
    page.goto(server["url"] + "/")
    page.click("#settings summary")
    page.fill("#api_key", "wrong-key")
    page.dispatch_event("#api_key", "change")
    page.fill("#input", "Hi")
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg.error")
    assert "API key" in page.locator(".msg.error").inner_text()
