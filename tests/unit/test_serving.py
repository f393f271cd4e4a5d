"""The ``--workers`` supervisor: its restart budget and its environment, with fake processes."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Mapping

import attrs
import pytest

from messaging import serving
from messaging.bench.apps import free_port
from messaging.settings import Settings


class FakeProc:
    """Just enough of ``subprocess.Popen`` for the supervisor."""

    _next_pid = 1000

    def __init__(self, env: Mapping[str, str]) -> None:
        FakeProc._next_pid += 1
        self.pid = FakeProc._next_pid
        self.env = dict(env)
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.returncode = 0

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired("worker", timeout or 0)
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


@pytest.fixture
def settings() -> Settings:
    return attrs.evolve(Settings(), host="127.0.0.1", port=free_port(), instance_id="app")


def _supervisor(settings: Settings, count: int) -> tuple[serving.Supervisor, list[FakeProc]]:
    spawned: list[FakeProc] = []
    now = [0.0]

    def spawn(env: Mapping[str, str]) -> FakeProc:
        proc = FakeProc(env)
        spawned.append(proc)
        return proc

    sup = serving.Supervisor(
        settings,
        count,
        spawn=spawn,
        say=lambda _: None,
        clock=lambda: now[0],  # type: ignore[arg-type]
    )
    return sup, spawned


def test_each_worker_gets_its_own_instance_id_and_the_shared_port(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESSAGING_INSTANCE_ID", "app")
    sup, spawned = _supervisor(settings, 3)
    sup.start()
    ids = [p.env["MESSAGING_INSTANCE_ID"] for p in spawned]
    assert ids == ["app-w0.0", "app-w1.0", "app-w2.0"]
    assert {p.env["MESSAGING_PORT"] for p in spawned} == {str(settings.port)}


def test_without_an_explicit_id_each_worker_derives_its_own(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESSAGING_INSTANCE_ID", raising=False)
    env = serving.worker_env(settings, 1, 0)
    assert "MESSAGING_INSTANCE_ID" not in env


def test_a_dead_worker_is_restarted_with_a_new_instance_id(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESSAGING_INSTANCE_ID", "app")
    sup, spawned = _supervisor(settings, 2)
    sup.start()
    spawned[1].returncode = -9
    assert sup.poll_once()
    assert len(spawned) == 3
    assert spawned[2].env["MESSAGING_INSTANCE_ID"] == "app-w1.1"
    assert sup.pids == [spawned[0].pid, spawned[2].pid]


def test_too_many_restarts_in_the_window_give_up(settings: Settings) -> None:
    sup, spawned = _supervisor(settings, 1)
    sup.start()
    for _ in range(serving.MAX_RESTARTS):
        spawned[-1].returncode = 1
        assert sup.poll_once()
    spawned[-1].returncode = 1
    assert not sup.poll_once()
    assert len(spawned) == 1 + serving.MAX_RESTARTS


def test_stop_terminates_every_worker_and_kills_what_hangs(settings: Settings) -> None:
    sup, spawned = _supervisor(settings, 2)
    sup.start()
    hanging = spawned[1]
    hanging.send_signal = lambda sig: hanging.signals.append(sig)  # type: ignore[method-assign]
    sup.stop(grace_seconds=0.0)
    assert spawned[0].returncode == 0
    assert hanging.signals == [signal.SIGTERM]
    assert hanging.returncode == -9
    spawned_after = len(spawned)
    assert sup.poll_once()  # stopping: nothing is restarted
    assert len(spawned) == spawned_after


def test_a_port_held_without_reuse_port_is_refused_before_any_worker_starts(
    settings: Settings,
) -> None:
    with socket.socket() as holder:
        holder.bind((settings.host, settings.port))
        holder.listen()
        sup, spawned = _supervisor(settings, 2)
        with pytest.raises(OSError, match="in use"):
            sup.start()
        assert spawned == []
