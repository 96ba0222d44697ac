"""The real app in a real browser: `streamlit run` on a free port, Debian's chromium via Playwright."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
XSS = '<img src=x onerror="alert(1)"><script>alert(2)</script>\n' * 3

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("chromium is missing: ./run test installs it with apt-get")
    pytest.skip("Debian's chromium is not installed (./run test installs it)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "ESAMP_HISTORY_DB": str(db)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not become healthy: " + proc.stdout.read().decode()[-2000:])
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_server(tmp_path_factory.mktemp("db") / "h.sqlite3")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def generate(browser, url, query, tmp_path, name):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{url}/?{urllib.parse.urlencode(query)}")
    page.get_by_role("button", name="Generate").click(timeout=120_000)
    page.wait_for_selector("text=Saved as run", timeout=300_000)
    page.wait_for_selector(".esx-tok", timeout=60_000)
    page.wait_for_selector(".js-plotly-plot", timeout=60_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    return page, dialogs


def test_a_generation_shows_heatmaps_and_the_spread(server, browser, tmp_path):
    page, _ = generate(browser, server, {"prompt": "Name a colour.", "n": 2, "tokens": 8}, tmp_path, "explore")
    assert page.locator(".esx-sample").count() == 4  # 2 samples x (esamp, plain)
    assert page.locator(".esx-tok").first.get_attribute("title").startswith("relative novelty")
    assert page.locator(".js-plotly-plot").count() >= 3
    assert (tmp_path / "explore.png").stat().st_size > 10_000


def test_markup_in_the_answer_is_shown_as_text_and_never_runs(server, browser, tmp_path):
    query = {"prompt": XSS, "n": 2, "tokens": 24, "top_k": 1, "raw": 1}  # greedy: it repeats the markup
    page, dialogs = generate(browser, server, query, tmp_path, "xss")
    text = page.locator(".esx-text").first.inner_text()
    assert "<script>alert(2)</script>" in text and 'onerror="alert(1)"' in text
    assert page.locator(".esx-text script, .esx-text img").count() == 0
    page.wait_for_timeout(1000)
    assert dialogs == []


def test_a_run_survives_a_restart_and_reopens_with_its_pictures(browser, tmp_path):
    db = tmp_path / "h.sqlite3"
    proc, url = start_server(db)
    try:
        page, _ = generate(browser, url, {"prompt": "Name a tree.", "n": 2, "tokens": 6}, tmp_path, "before")
        first_answer = page.locator(".esx-text").first.inner_text()
    finally:
        stop_server(proc)
    proc, url = start_server(db)  # a new server process on the same database
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/history")
        page.wait_for_selector(".esx-tok", timeout=120_000)
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        assert page.locator(".esx-text").first.inner_text() == first_answer
        page.screenshot(path=str(tmp_path / "after-restart.png"))
    finally:
        stop_server(proc)


def test_a_direct_link_to_a_page_keeps_the_sidebar_model_choice_across_pages(server, browser):
    """Opening /learn directly goes through the entry point (no automatic pages/ folder), so the
    sidebar's model choice is there and follows the user to the next page."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/learn?model=/models/from-a-link")
    page.wait_for_selector("text=Try it on the loaded model", timeout=60_000)
    model = page.get_by_role("textbox", name="Model")
    expect(model).to_have_value("/models/from-a-link", timeout=10_000)
    model.fill("/models/typed")
    model.press("Enter")
    expect(page.locator("text=Runs on /models/typed")).to_be_visible(timeout=10_000)
    page.get_by_role("link", name="Sweep").click()
    page.wait_for_selector("text=What to sweep", timeout=60_000)
    expect(page.get_by_role("textbox", name="Model")).to_have_value("/models/typed", timeout=10_000)
    expect(page.locator("text=Runs on /models/typed")).to_be_visible(timeout=10_000)
    page.close()
