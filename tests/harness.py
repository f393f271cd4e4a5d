"""Run app processes as real OS processes against the local stack.

The stack itself (Kafka, DynamoDB API, Redis) is started by ``make test`` before pytest; the
harness starts and stops ``messaging serve`` processes on free ports, each with the test
session's table prefix, and can stop them gracefully (SIGTERM) or kill them (SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import httpx

from messaging.bench.apps import free_port
from messaging.devstack.faults import sigkill

ARTIFACTS = Path(os.environ.get("MESSAGING_TEST_ARTIFACTS", "test-artifacts"))


class AppProcess:
    """One ``messaging serve`` process."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        self.port = free_port()
        # Unique per process: routing and hand-off address processes by instance id, so two
        # processes sharing one would take each other's deliveries.
        self.instance_id = f"{name}-{uuid.uuid4().hex[:6]}"
        self.env = {
            **os.environ,
            **env,
            "MESSAGING_PORT": str(self.port),
            "MESSAGING_INSTANCE_ID": self.instance_id,
            # Every log line reaches the file before a SIGKILL (a scenario's last seconds were
            # missing from an app's log: block-buffered stdout).
            "PYTHONUNBUFFERED": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.serve_args: list[str] = []
        """Extra arguments of ``messaging serve`` (e.g. ``--workers 2``)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / f"app-{self.instance_id}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> AppProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "messaging", "serve", *self.serve_args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app {self.name} exited: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"app {self.name} did not start in {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        sigkill(self.proc)
