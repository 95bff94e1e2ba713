"""The routing dashboard in a real browser: lesson 09 in JupyterLab, and the stand-alone Voila app.

Each test types a text, waits for the coloured tokens, checks that their ``data-token`` and
``data-expert`` values are the routing the model computes for that text in Python, switches the
layer, checks again, and saves a screenshot of each state under ``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from helpers import ARTIFACTS, ROOT, SERVER_STOP_S, nothing_listens

from moe_teach.lessons import routing_analysis as ra

LESSON = ROOT / "notebooks" / "09_routing_dashboard.ipynb"
TEXT = "the court found that the zebra was liable under the statute ."
WAIT_MS = 60_000          # bound on every wait for the page
RUN_ALL_S = 240           # bound on running all of lesson 09's cells in JupyterLab

SHOWN = """(layer) => Array.from(document.querySelectorAll(
    `.moe-dashboard-tokens span.moe-token[data-layer="${layer}"]`)).map(
    (s) => [s.dataset.token, Number(s.dataset.expert), s.title])"""


def expected_routing(model_and_tokenizer, text):
    model, tokenizer = model_and_tokenizer
    routing = ra.route_text(model, tokenizer, text)
    tokens = ["<unk>" if unk else w for w, unk in zip(routing.words, routing.unknown)]
    layers = [routing.first_choice(i) for i in range(routing.num_layers)]
    assert layers[0] != layers[1], "the test text must route differently at the two layers"
    assert "<unk>" in tokens, "the test text should hold a word the tokenizer does not know"
    return tokens, layers


def type_text(page, text):
    box = page.locator(".moe-dashboard-text textarea").first
    box.wait_for(state="visible", timeout=WAIT_MS)
    box.fill("")
    box.press_sequentially(text, delay=5)


def wait_for_tokens(page, layer, tokens):
    """Wait until the dashboard shows exactly ``tokens`` at ``layer``; return [(token, expert, tooltip)]."""
    page.wait_for_function(
        f"([layer, tokens]) => JSON.stringify(({SHOWN})(layer).map((s) => s[0])) === JSON.stringify(tokens)",
        arg=[layer, tokens], timeout=WAIT_MS)
    return page.evaluate(SHOWN, layer)


def choose_layer(page, layer):
    page.locator(".moe-dashboard-layer button", has_text=f"layer {layer}").first.click()


def check_dashboard_in_page(page, model_and_tokenizer, name, timings):
    """Type, check layer 0, switch to layer 1, check again; a screenshot of each state."""
    tokens, experts = expected_routing(model_and_tokenizer, TEXT)
    start = time.perf_counter()
    type_text(page, TEXT)
    shown = wait_for_tokens(page, 0, tokens)
    timings[f"{name}: typed text to coloured tokens"] = time.perf_counter() - start
    assert len(shown) == len(tokens)
    assert [e for _, e, _ in shown] == experts[0]
    assert all("router probabilities: E0" in title and "weights used" in title for _, _, title in shown)
    dashboard = page.locator(".moe-dashboard").first
    dashboard.screenshot(path=str(ARTIFACTS / f"{name}_layer0.png"))

    start = time.perf_counter()
    choose_layer(page, 1)
    shown = wait_for_tokens(page, 1, tokens)
    timings[f"{name}: layer switch"] = time.perf_counter() - start
    assert [e for _, e, _ in shown] == experts[1] != experts[0]
    assert page.evaluate(SHOWN, 0) == [], "layer 0's row is gone once layer 1 is selected"
    dashboard.screenshot(path=str(ARTIFACTS / f"{name}_layer1.png"))


@pytest.fixture(scope="module")
def timings():
    measured = {}
    yield measured
    rounded = {k: round(v, 2) for k, v in measured.items()}
    (ARTIFACTS / "timings.json").write_text(json.dumps(rounded, indent=1))
    print("\nbrowser timings (s): " + json.dumps(rounded))


def test_lesson09_in_jupyterlab(browser, jupyter_lab, model_and_tokenizer, timings):
    code_cells = sum(c["cell_type"] == "code" for c in json.loads(LESSON.read_text())["cells"])
    page = browser.new_page()
    try:
        start = time.perf_counter()
        page.goto(f"{jupyter_lab['url']}/lab/tree/notebooks/{LESSON.name}?token={jupyter_lab['token']}",
                  timeout=WAIT_MS)
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=WAIT_MS)
        page.get_by_text("Python 3 (ipykernel) | Idle").first.wait_for(timeout=WAIT_MS)   # the kernel is up
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        page.wait_for_function(  # every code cell has run: its prompt shows a number, not [ ] or [*]
            """(count) => {
                const prompts = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'));
                return prompts.length === count && prompts.every((p) => /\\[\\d+\\]/.test(p.textContent)); }""",
            arg=code_cells, timeout=RUN_ALL_S * 1000)
        timings["jupyterlab: open lesson 09 and run all cells"] = time.perf_counter() - start
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                              has_text="Traceback")
        assert errors.count() == 0, errors.first.inner_text()
        check_dashboard_in_page(page, model_and_tokenizer, "jupyterlab", timings)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "jupyterlab_failure.png"))
        raise
    finally:
        page.close()


def test_voila_app(browser, voila_app, model_and_tokenizer, timings):
    page = browser.new_page()
    try:
        start = time.perf_counter()
        page.goto(voila_app["url"], timeout=WAIT_MS)
        page.locator(".moe-dashboard-text textarea").first.wait_for(timeout=WAIT_MS)
        timings["voila: page load to dashboard"] = time.perf_counter() - start
        assert page.locator(".jp-CodeMirrorEditor, .cm-editor").count() == 0, "the app shows no code editor"
        assert page.get_by_text("routing_dashboard(checkpoint").count() == 0, "the app shows no code"
        check_dashboard_in_page(page, model_and_tokenizer, "voila", timings)
        page.screenshot(path=str(ARTIFACTS / "voila_page.png"), full_page=True)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "voila_failure.png"))
        raise
    finally:
        page.close()
    log = voila_app["log"].read_text()
    assert f"at {voila_app['url']}" in log and "Ctrl+C" in log, log


def test_voila_app_stops_cleanly_on_ctrl_c(voila_app, timings):
    process = voila_app["process"]
    start = time.perf_counter()
    process.send_signal(signal.SIGINT)       # what Ctrl+C sends
    status = process.wait(SERVER_STOP_S)
    timings["voila: Ctrl+C to stopped"] = time.perf_counter() - start
    log = voila_app["log"].read_text()
    assert status == 0, log
    assert log.rstrip().endswith("moe-teach dashboard: stopped"), log
    assert "Traceback" not in log, log
    assert nothing_listens(voila_app["port"])
