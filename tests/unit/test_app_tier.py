"""The stack's app tier (ADR 0031): HAProxy's configuration, the apps' ports and ids, the
connection counts ``stack status`` shows."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import attrs
import pytest

from messaging.devstack.apps import App, HAProxy, _unchunk, haproxy_config, metric_total
from messaging.devstack.stack import app_tier, recorded_profile
from messaging.settings import Settings, from_env


def test_haproxy_balances_websockets_over_ready_apps() -> None:
    config = haproxy_config(Settings(port=8000, stack_app_port=8100), 3)
    assert "bind 127.0.0.1:8000" in config
    for n in (1, 2, 3):
        assert f"server app-{n} 127.0.0.1:{8100 + n} check" in config
    assert "server app-4" not in config
    assert "balance leastconn" in config
    assert "option httpchk GET /readyz" in config
    assert "http-check expect status 200" in config
    assert "inter 500ms fall 2 rise 2" in config
    assert "timeout tunnel 3600s" in config  # WebSockets outlive the HTTP timeouts
    assert "option redispatch" in config  # a refused connection goes to another app
    assert "option forwardfor" in config
    assert "option http-server-close" in config  # idle keep-alives do not count as load


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy_config(Settings(port=8000, stack_app_port=8100), 3))
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "ALERT" not in result.stderr, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_the_tier_is_n_apps_then_haproxy(tmp_path: Path) -> None:
    settings = Settings(stack_dir=tmp_path, stack_apps=3, stack_app_port=9100, port=9000)
    tier = app_tier(settings)
    assert [s.name for s in tier] == ["app-1", "app-2", "app-3", "haproxy"]
    apps = [s for s in tier if isinstance(s, App)]
    assert [a.port for a in apps] == [9101, 9102, 9103]
    assert isinstance(tier[-1], HAProxy)
    assert tier[-1].ports()[0][0] == 9000
    assert app_tier(attrs.evolve(settings, stack_apps=0)) == []


def test_each_app_gets_its_own_port_and_instance_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESSAGING_INSTANCE_ID", raising=False)
    settings = Settings(stack_apps=2, stack_app_port=9100)
    app = App(settings, app_tier(settings)[1].process, 2)
    env = app.env()
    assert env["MESSAGING_PORT"] == "9102"
    assert "MESSAGING_INSTANCE_ID" not in env  # derived in the app from host, port and pid
    monkeypatch.setenv("MESSAGING_INSTANCE_ID", "pod-7")
    named = App(attrs.evolve(settings, instance_id="pod-7"), app.process, 2)
    assert named.env()["MESSAGING_INSTANCE_ID"] == "pod-7-app2"


def test_up_records_the_tier_size_for_status_and_down(tmp_path: Path) -> None:
    settings = Settings(stack_dir=tmp_path)
    assert recorded_profile(settings).stack_apps == 0
    (tmp_path / "apps").write_text("3\n")
    assert recorded_profile(settings).stack_apps == 3


def test_settings_name_the_tier() -> None:
    settings = from_env({"MESSAGING_STACK_APPS": "3", "MESSAGING_STACK_APP_PORT": "9100"})
    assert (settings.stack_apps, settings.stack_app_port) == (3, 9100)
    with pytest.raises(ValueError, match="MESSAGING_STACK_APPS"):
        from_env({"MESSAGING_STACK_APPS": "33"})


def test_connection_counts_come_from_the_metrics() -> None:
    exposition = (
        "# HELP messaging_ws_connections Open authenticated sockets\n"
        "# TYPE messaging_ws_connections gauge\n"
        "messaging_ws_connections 7.0\n"
        "messaging_ws_connections_total 99.0\n"
    )
    assert metric_total(exposition, "messaging_ws_connections") == 7
    assert metric_total("", "messaging_ws_connections") == 0
    assert _unchunk(b"5\r\nhello\r\n3\r\n ok\r\n0\r\n\r\n") == b"hello ok"


def test_doctor_lists_the_recorded_tier_ports_and_the_public_port_once(tmp_path: Path) -> None:
    from messaging.devstack import doctor

    (tmp_path / "apps").write_text("2\n")
    settings = Settings(stack_dir=tmp_path, port=19000, stack_app_port=19100)
    listed = [p.port for p in doctor.ports(settings)]
    assert {19101, 19102} <= set(listed)
    assert listed.count(19000) == 1


def test_down_forgets_the_tier_so_a_plain_up_serves_no_apps(tmp_path: Path) -> None:
    from messaging.devstack.stack import down

    (tmp_path / "apps").write_text("3\n")
    said: list[str] = []
    down(recorded_profile(Settings(stack_dir=tmp_path)), said.append)
    assert "app-1: not running" in said
    assert "haproxy: not running" in said
    assert recorded_profile(Settings(stack_dir=tmp_path)).stack_apps == 0
