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
def config(tmp_path_factory, request):
    cache = getattr(request.config, "cache", None)
    jax_cache = cache.mkdir("simcore-jax") if cache is not None else tmp_path_factory.mktemp("jax-cache")
    return ServerConfig(runs_dir=tmp_path_factory.mktemp("browser-runs"), compile_cache=str(jax_cache))


@pytest.fixture(scope="module")
def server(config):
    with ServerThread(create_app(config)) as srv:
        yield srv


def points(chart: int = 0) -> str:
    """JS: how many steps the page has drawn in the run's chart ``chart`` (its model's metric group)."""
    return (f"(document.getElementById('chart-group-{chart}') && document.getElementById('chart-group-{chart}').data "
            f"? document.getElementById('chart-group-{chart}').data[0].x.length : 0)")


POINTS = points(0)
TITLES = "[...document.querySelectorAll('#model-charts h3')].map((h) => h.textContent)"


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


def test_a_social_run_charts_its_own_series_and_follow_graph_and_draws_again_from_disk(browser, server, config):
    """polarization_small: the model's own charts (no epidemic compartments) and its follow graph, live;
    then, after a server restart, the same run opened from disk draws its whole history."""
    steps = 40
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#scenario-select option[value=polarization_small]", state="attached")
        page.select_option("#scenario-select", "polarization_small")
        page.fill("#overrides", f"run.steps={steps}\nrun.chunk_size=5")
        page.click("#start-btn")
        page.wait_for_function(f"{POINTS} === {steps}", timeout=240_000)
        run_id = page.inner_text("#run-title")
        titles = page.evaluate(TITLES)
        assert {"Stance and polarization", "Posts", "Actions"} <= set(titles), titles
        assert "Epidemic compartments" not in titles
        assert page.evaluate("document.getElementById('chart-group-0').data.map((t) => t.name)")[0] == "stance_mean"
        page.wait_for_function("document.getElementById('network').data !== undefined", timeout=60_000)
        assert page.inner_text("#network-title") == "Follow graph"
        assert " follows, stance at step " in page.inner_text("#network-msg")
        legend = page.evaluate("document.getElementById('network').data.map((t) => t.name)")
        assert legend[0] == "follows" and "strongly_for" in legend
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / ".gitignore").write_text("*\n")
        page.screenshot(path=str(ARTIFACTS / "dashboard-social.png"), full_page=True)
    finally:
        page.close()

    with ServerThread(create_app(config)) as again:  # a fresh server process state: the run is on disk only
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(f"{again.url}/#{run_id}")
            page.wait_for_function(f"{POINTS} === {steps}", timeout=10_000)  # the full history, within 10 s
            assert "from disk" in page.inner_text("#run-sub")
            assert set(page.evaluate(TITLES)) == set(titles)
            for i in range(len(titles)):
                assert page.evaluate(points(i)) == steps
            assert page.inner_text("#run-status") == "completed"
        finally:
            page.close()
    assert errors == []
