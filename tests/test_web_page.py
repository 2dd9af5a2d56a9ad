"""The chat page at `/` in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright's Python client): an answer streams in, the Stop button stops a generation on the
server too, and a screenshot is saved to tests/artifacts/web_page.png (and to docs/web_page.png
when LLAMA_WEBGPU_UPDATE_SCREENSHOT=1).

Skipped when Chromium or Playwright is missing, unless LLAMA_WEBGPU_REQUIRE_BROWSER=1."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import REQUIRE_BROWSER_ENV, need

for _needed in ("httpx", "starlette", "uvicorn"):  # the server's own dependencies
    pytest.importorskip(_needed)

from server_process import MODEL, metric, start_server, stop_server, wait_idle  # noqa: E402

CHROMIUM = os.environ.get("LLAMA_WEBGPU_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# records the length of the last assistant bubble each time the page changes it
RECORD_LENGTHS = """() => {
  window.lengths = [];
  new MutationObserver(() => {
    const bubbles = document.querySelectorAll('.message.assistant .bubble');
    if (bubbles.length) window.lengths.push(bubbles[bubbles.length - 1].textContent.length);
  }).observe(document.getElementById('messages'), {childList: true, subtree: true,
                                                   characterData: true});
}"""

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    need(
        sync_playwright is not None,
        "playwright (pip install playwright) is not installed",
        REQUIRE_BROWSER_ENV,
    )
    need(
        os.access(CHROMIUM, os.X_OK),
        f"no Chromium at {CHROMIUM} (apt-get install chromium)",
        REQUIRE_BROWSER_ENV,
    )
    return sync_playwright


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    import httpx

    from llama_webgpu.models import model_path

    model_path()
    proc, url = start_server(tmp_path_factory.mktemp("server") / "server.log")
    with httpx.Client(base_url=url, timeout=60) as http:
        yield url, http
    stop_server(proc)


@pytest.fixture
def page(sync_playwright, tmp_path):
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 900, "height": 680},
        )
        try:
            context.set_default_timeout(60_000)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def wait_state(page, state: str, seconds: float = 90) -> None:
    page.wait_for_function(
        f"document.body.dataset.state === {state!r}", timeout=int(seconds * 1000)
    )


def test_page_streams_an_answer_and_stop_stops_the_server(page, base):
    url, http = base
    page.goto(url + "/")
    page.wait_for_function(f"document.getElementById('model').textContent.includes({MODEL!r})")

    # an answer streams in: the bubble's text grows several times, then the page is idle
    page.fill("#system", "You are a helpful assistant.")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "40")
    page.evaluate(RECORD_LENGTHS)
    page.fill("#prompt", "Describe Paris in two sentences.")
    page.press("#prompt", "Enter")
    wait_state(page, "idle")
    lengths = [n for n in page.evaluate("window.lengths") if n > 0]
    assert len(set(lengths)) >= 3, f"the answer did not stream: {lengths}"
    assert lengths == sorted(lengths)
    answer = page.inner_text(".message.assistant .bubble")
    assert answer.strip() and answer.strip() != "…"
    assert "tokens/s" in page.inner_text("#stats")
    assert page.locator(".message.user").count() == 1

    # a long generation, stopped from the page: the server stops too
    cancelled = metric(http, "requests_cancelled_total")
    page.fill("#temperature", "0.8")
    page.fill("#max-tokens", "1500")
    page.fill("#prompt", "Write a very long story about a dragon who learns to cook.")
    page.click("#send")
    page.wait_for_function(
        "document.querySelectorAll('.message.assistant .bubble')[1]?.textContent.length > 20"
    )
    assert page.evaluate("document.body.dataset.state") == "generating"
    page.click("#stop")
    wait_state(page, "idle", 10)
    assert "stopped" in page.inner_text("#status")
    assert "stopped" in page.locator(".message.assistant .meta").nth(1).inner_text()
    wait_idle(http, 5)
    assert metric(http, "requests_cancelled_total") == cancelled + 1
    stopped_text = page.locator(".message.assistant .bubble").nth(1).inner_text()
    time.sleep(0.5)
    assert page.locator(".message.assistant .bubble").nth(1).inner_text() == stopped_text

    # the conversation is kept: a follow-up is answered after both turns
    page.fill("#max-tokens", "12")
    page.fill("#prompt", "Thanks!")
    page.press("#prompt", "Enter")
    wait_state(page, "idle")
    assert page.locator(".message.user").count() == 3
    assert page.locator(".message.assistant").count() == 3

    artifacts = ROOT / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "web_page.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("LLAMA_WEBGPU_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "web_page.png")
