"""Shared fixtures: the test session's settings (a private table prefix and topic), and the
second DynamoDB API emulator.

The stack's emulator (dynoxide by default) is one target of the DynamoDB-backed suites; this
session also starts moto's server (serialized, ``messaging.devstack.moto_server``) on a free port,
so the durability code is checked against both emulators, not against one emulator's quirks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid

import attrs
import pytest

from messaging.bench.apps import free_port
from messaging.settings import Settings, from_env

RUN_ID = uuid.uuid4().hex[:8]
DYNOXIDE_ENV = "MESSAGING_TEST_DYNOXIDE_ENDPOINT"
MOTO_ENV = "MESSAGING_TEST_MOTO_ENDPOINT"

_moto: subprocess.Popen[bytes] | None = None


def _wait_listening(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.1)
    return False


def pytest_configure(config: pytest.Config) -> None:
    global _moto
    settings = from_env()
    if settings.dynamodb_emulator == "dynoxide":
        os.environ.setdefault(DYNOXIDE_ENV, settings.dynamodb_endpoint)
    if MOTO_ENV not in os.environ and not os.environ.get("MESSAGING_TEST_NO_MOTO"):
        port = free_port()
        _moto = subprocess.Popen(
            [sys.executable, "-m", "messaging.devstack.moto_server", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _wait_listening(port, 20):
            os.environ[MOTO_ENV] = f"http://127.0.0.1:{port}"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _moto is not None:
        _moto.terminate()
        try:
            _moto.wait(10)
        except subprocess.TimeoutExpired:
            _moto.kill()
            _moto.wait()


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """Settings for this test session: the local stack, private tables and topic."""
    settings = from_env()
    return attrs.evolve(
        settings,
        env="test",
        table_prefix=f"t{RUN_ID}-",
        kafka_messages_topic=f"messages-{RUN_ID}",
        kafka_consumer_group=f"fanout-{RUN_ID}",
        instance_id=f"pytest-{RUN_ID}",
    )
