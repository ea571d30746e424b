"""`recsys-serve` in a process of its own on a free loopback port, ready once it answers /health (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(run: str | Path, timeout_s: float = 300.0) -> Iterator[str]:
    """Start `recsys-serve --run run` on 127.0.0.1 and yield its base URL once /health answers; stop it after.

    Raises:
        RuntimeError: the service exited (with the end of its output) or did not answer within `timeout_s`.
    """
    port = free_port()
    script = Path(sys.executable).parent / "recsys-serve"
    # its output goes to a file, not a pipe: a pipe nobody reads would fill up and stall the service
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([str(script), "--run", str(run), "--port", str(port)], stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for_health(process, url, log, timeout_s)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_for_health(process: subprocess.Popen, url: str, log, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"recsys-serve exited {process.returncode}: {log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"recsys-serve did not answer {url}/health within {timeout_s:.0f} s")
        time.sleep(0.5)
