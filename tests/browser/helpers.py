"""Helpers of the real-browser tests: ports, starting and stopping servers, the browser's options."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 120
SERVER_STOP_S = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def nothing_listens(port: int) -> bool:
    """True when no server accepts connections on ``port`` (a closed port may linger in TIME_WAIT: that is fine)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float = SERVER_START_S) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with status {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"no answer from {url} after {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen, sig=signal.SIGTERM) -> int:
    """Signal ``process``; after ``SERVER_STOP_S`` kill it (and its process group). Returns its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    return process.wait(10)


def server_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["JUPYTER_PREFER_ENV_PATH"] = "1"          # the notebooks' python3 kernel is this environment's
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp / "workspaces")
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    return env
