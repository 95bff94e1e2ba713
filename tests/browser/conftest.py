"""Real-browser tests: Playwright driving Debian's Chromium against JupyterLab and the Voila app.

Run them with ``python3 course.py test --only browser`` (which installs chromium with apt when it is
missing) or ``pytest tests/browser``; ``pytest tests`` does not collect this folder (see
``norecursedirs`` in pyproject.toml), so the unit tests stay fast. Playwright's own browser download
is not used: the browser is ``shutil.which("chromium")``.

Every server a test starts is stopped at the end, and every wait has a bound. Screenshots go to
``test-artifacts/browser/`` (git-ignored).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys

import pytest
from helpers import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    ROOT,
    free_port,
    nothing_listens,
    server_env,
    stop_server,
    wait_for_http,
)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` "
                    "(python3 course.py test --only browser does this when it can)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path, tmp_path_factory):
    """One Chromium with a fresh user-data folder for the whole session; closed at the end."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium_path, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1100})
        context.set_default_timeout(60_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="session")
def model_and_tokenizer():
    """The default model, from the same cache the servers' kernels read (trained here if missing)."""
    from moe_teach.lessons import routing_analysis as ra

    return ra.default_model(progress=False)


@pytest.fixture(scope="session")
def jupyter_lab(tmp_path_factory, model_and_tokenizer):
    """JupyterLab on 127.0.0.1 with a token, serving a copy of notebooks/ (autosave cannot touch the repo)."""
    tmp = tmp_path_factory.mktemp("jupyterlab")
    (tmp / "root").mkdir()
    shutil.copytree(ROOT / "notebooks", tmp / "root" / "notebooks")
    settings = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    notebook_settings = tmp / "settings" / "@jupyterlab" / "notebook-extension"
    notebook_settings.mkdir(parents=True)   # render every cell (no virtual scrolling), so all prompts are in the page
    (notebook_settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
               "--ServerApp.port_retries=0", f"--ServerApp.token={token}", f"--ServerApp.root_dir={tmp / 'root'}",
               f"--LabApp.user_settings_dir={tmp / 'settings'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = tmp / "jupyterlab.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=server_env(tmp),
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/api/status?token={token}", process, log)
        yield {"url": url, "token": token, "port": port}
    finally:
        stop_server(process)
    assert nothing_listens(port), f"JupyterLab still listens on port {port} after stopping"


@pytest.fixture(scope="session")
def voila_app(tmp_path_factory, model_and_tokenizer):
    """``moe-teach dashboard --no-browser --port P`` (the command learners run); stopped with Ctrl+C's signal."""
    tmp = tmp_path_factory.mktemp("voila")
    port = free_port()
    log = tmp / "dashboard.log"
    command = [sys.executable, "-m", "moe_teach.course.cli", "dashboard", "--no-browser", f"--port={port}"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=server_env(tmp),
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    info = {"url": url, "port": port, "log": log, "process": process}
    try:
        wait_for_http(url, process, log)
        yield info
    finally:   # test_voila_app_stops_cleanly_on_ctrl_c normally stopped it already
        stop_server(process, signal.SIGINT)
