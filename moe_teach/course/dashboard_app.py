"""``moe-teach dashboard``: the lesson-09 routing dashboard as a web page of its own (Voila).

    moe-teach dashboard [--checkpoint PATH] [--port N] [--no-browser]

Voila runs a one-cell notebook that builds :func:`~moe_teach.widgets.dashboard.routing_dashboard`
and shows only its output: the page holds the widgets, no code cells. Without ``--checkpoint``
the default model is trained first (a few seconds, once; then cached) so the page opens fast.
The command prints the URL and stops cleanly on Ctrl+C. A bad checkpoint path and a port in use
are each one clear line (exit status 2), before anything starts.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat

from ..lessons.routing_analysis import CACHE_ENV, ensure_default_checkpoint, load_model

CHECKPOINT_ENV = "MOE_TEACH_DASHBOARD_CHECKPOINT"   # how the served notebook learns which model to load
DEFAULT_PORT = 8866                                 # Voila's own default
HOST = "127.0.0.1"
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 15

APP_CELL = f"""\
import os

from moe_teach.widgets.dashboard import routing_dashboard

routing_dashboard(checkpoint=os.environ["{CHECKPOINT_ENV}"], progress=False)"""


def app_notebook(folder: Path) -> Path:
    """Write the notebook Voila serves (a title and the one cell that builds the dashboard)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# moe-teach: routing dashboard\n\nType a text and see which "
                                              "expert each token is routed to, layer by layer."),
                nbformat.v4.new_code_cell(APP_CELL)]
    path = folder / "routing_dashboard.ipynb"
    nbformat.write(nb, path)
    return path


def check_port(port) -> int:
    """A free TCP port on 127.0.0.1: ``port`` itself (ValueError if taken), or any free one for 0."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"--port must be a port number 0..65535 (0: any free port), got {port!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise ValueError(f"--port {port} is in use (another dashboard or server?); "
                             "pick another with --port N, or --port 0 for any free port") from None
        return probe.getsockname()[1]


def check_checkpoint(path) -> Path:
    """``path`` if it holds a moe-teach MoE language model, else one clear ValueError naming the flag."""
    try:
        load_model(path, progress=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"--checkpoint: {error}") from None
    return Path(path).resolve()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint written by lesson 07 or `moe-teach train` (default: the default "
                             "model, trained once and cached)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve on (0: any free port)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    parser.add_argument("--cache-dir", default=None,
                        help=f"folder for the cached default model (default: ${CACHE_ENV} or ~/.cache/moe-teach)")


def voila_command(notebook: Path, port: int, open_browser: bool) -> list[str]:
    command = [sys.executable, "-m", "voila", str(notebook), f"--port={port}", f"--Voila.ip={HOST}",
               "--Voila.port_retries=0", f"--Voila.root_dir={notebook.parent}", "--Voila.log_level=ERROR"]
    return command + ([] if open_browser else ["--no-browser"])


def wait_until_serving(url: str, process: subprocess.Popen, timeout_s: float = START_TIMEOUT_S) -> bool:
    """Poll ``url`` until it answers (True), the server exits or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return True
        except OSError:
            time.sleep(0.3)
    return False


def stop(process: subprocess.Popen) -> int:
    """Ask the server to stop (SIGINT, as Ctrl+C does), wait, then terminate or kill it if need be."""
    for send in (lambda: process.send_signal(signal.SIGINT), process.terminate, process.kill):
        if process.poll() is not None:
            break
        send()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


def _restore_sigint() -> None:
    """In the server's process: take Ctrl+C's default again (a background job starts with it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return serve(args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(args: argparse.Namespace) -> int:
    """Check the arguments, start Voila, print the URL, wait for Ctrl+C (or SIGTERM), stop Voila."""
    port = check_port(args.port)
    if args.checkpoint is not None:
        checkpoint = check_checkpoint(args.checkpoint)
    else:
        print("moe-teach dashboard: preparing the default model (trained once, then cached)", flush=True)
        checkpoint = ensure_default_checkpoint(args.cache_dir, progress=True).resolve()
    env = dict(os.environ, **{CHECKPOINT_ENV: str(checkpoint), "JUPYTER_PREFER_ENV_PATH": "1"})
    with tempfile.TemporaryDirectory(prefix="moe-teach-dashboard-") as folder:
        notebook = app_notebook(Path(folder))
        process = subprocess.Popen(voila_command(notebook, port, not args.no_browser), env=env,
                                   preexec_fn=_restore_sigint if os.name == "posix" else None)
        url = f"http://{HOST}:{port}/"
        try:
            if not wait_until_serving(url, process):
                stop(process)
                print(f"moe-teach dashboard: error: the server did not start at {url}", file=sys.stderr)
                return 1
            print(f"moe-teach dashboard: serving the routing dashboard of {checkpoint.name} at {url}\n"
                  "moe-teach dashboard: press Ctrl+C to stop", flush=True)
            process.wait()
        except KeyboardInterrupt:
            print("\nmoe-teach dashboard: stopping ...", flush=True)
            stop(process)
            print("moe-teach dashboard: stopped", flush=True)
            return 0
    return process.returncode
