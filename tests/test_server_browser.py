"""The dashboard page in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Never downloads a browser: without /usr/bin/chromium or the playwright package the
test is skipped with the reason. CI installs both with .ci/install-browser.sh.
A screenshot is saved under test-artifacts/ (ignored by git).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from server.app import ServerConfig, create_app
from server.testing import ServerThread

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = pytest.mark.browser


def _requirements() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium, or run .ci/install-browser.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; never `playwright install`)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    cache = getattr(request.config, "cache", None)
    jax_cache = cache.mkdir("simcore-jax") if cache is not None else tmp_path_factory.mktemp("jax-cache")
    cfg = ServerConfig(runs_dir=tmp_path_factory.mktemp("browser-runs"), compile_cache=str(jax_cache))
    with ServerThread(create_app(cfg)) as srv:
        yield srv


POINTS = "document.getElementById('chart-compartments').data ? document.getElementById('chart-compartments').data[0].x.length : 0"


def test_page_starts_a_run_draws_it_live_and_pauses(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    offline = []
    page.on("request", lambda req: None if req.url.startswith(server.url) else offline.append(req.url))
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#scenario-select option[value=covid_small]", state="attached")
        assert page.evaluate("typeof Plotly") == "object"  # served by the app from the plotly package
        page.select_option("#scenario-select", "covid_small")
        page.fill("#overrides", "population.size=5000\noutput.sample_agents=100\nrun.chunk_size=5\nrun.steps=100000")
        page.click("#start-btn")

        page.wait_for_function(f"({POINTS}) > 0", timeout=240_000)
        first = page.evaluate(POINTS)
        page.wait_for_function(f"({POINTS}) > {first + 20}", timeout=60_000)  # the chart grows
        assert page.inner_text("#run-status") == "running"

        page.click("#pause-btn")
        page.wait_for_function("document.getElementById('run-status').textContent === 'paused'", timeout=60_000)
        # the last rows land: one point per step shown, none lost, none repeated
        page.wait_for_function(f"({POINTS}) === Number(document.getElementById('run-step').textContent)",
                               timeout=60_000)
        step = int(page.inner_text("#run-step"))
        time.sleep(2.0)
        assert int(page.inner_text("#run-step")) == step  # the counter stopped
        assert page.evaluate(POINTS) == step

        page.click("#step-btn")
        page.wait_for_function(f"Number(document.getElementById('run-step').textContent) === {step + 1}",
                               timeout=240_000)
        page.fill("#iv-value", "0.2")
        page.click("#intervene-btn")
        page.wait_for_selector("#iv-list li", timeout=60_000)
        assert "community_scale" in page.inner_text("#iv-list") or "household_scale" in page.inner_text("#iv-list")
        page.wait_for_function("document.querySelectorAll('#agents-table tbody tr').length > 0", timeout=60_000)
        page.wait_for_function("document.getElementById('network').data !== undefined", timeout=60_000)

        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / ".gitignore").write_text("*\n")  # artifacts are never committed
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000

        page.click("#stop-btn")
        page.wait_for_function("document.getElementById('run-status').textContent === 'stopped'", timeout=60_000)
    finally:
        page.close()
    assert errors == []
    assert offline == []  # no CDN, nothing outside the app
