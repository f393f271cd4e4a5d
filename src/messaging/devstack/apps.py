"""The stack's app tier (``messaging stack up --apps N``): N app processes behind HAProxy.

Each app is an ordinary ``messaging serve`` process on its own port (``MESSAGING_STACK_APP_PORT``
+ 1 .. + N), with its own instance id, pid file and log in the stack folder. HAProxy (Debian's
package) listens on the public port (``MESSAGING_PORT``), passes WebSocket upgrades through
(``timeout tunnel``), checks each app's ``/readyz`` every half second and sends new connections
to the app with the fewest (ADR 0031). An app that gets SIGTERM closes its sockets with 1001;
its clients reconnect through HAProxy to the others and sync.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from messaging.devstack.process import ManagedProcess, StackError
from messaging.devstack.services import Say
from messaging.settings import Settings, env_var

CHECK_INTERVAL_MS = 500
"""How often HAProxy asks each app's ``/readyz``."""
CHECK_FALL = 2
"""Failed checks before an app takes no new connections (1 s at ``CHECK_INTERVAL_MS``)."""
CHECK_RISE = 2
"""Passed checks before it takes them again."""
TUNNEL_TIMEOUT_SECONDS = 3600
"""An established WebSocket may stay idle this long in HAProxy; the app's own pings (every
``MESSAGING_WS_PING_INTERVAL_SECONDS``) and idle timeout decide long before."""


def app_port(settings: Settings, index: int) -> int:
    """App ``index`` (1-based) listens on the app base port + index."""
    return settings.stack_app_port + index


def _http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A tiny blocking HTTP/1.1 GET on 127.0.0.1 (the stack commands have no event loop)."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError(f"not an HTTP answer: {head[:60]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return int(status_line[1]), body


def _unchunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def ws_connections(port: int) -> int | None:
    """The app's open authenticated sockets (``messaging_ws_connections`` on ``/metrics``)."""
    try:
        status, body = _http_get(port, "/metrics")
    except OSError:
        return None
    return (
        metric_total(body.decode(errors="replace"), "messaging_ws_connections")
        if status == 200
        else None
    )


def metric_total(exposition: str, name: str) -> int:
    """The sum of a metric's samples in Prometheus text (0 when absent)."""
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


@attrs.define
class App:
    """One ``messaging serve`` process of the app tier."""

    settings: Settings
    process: ManagedProcess
    index: int

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def port(self) -> int:
        return app_port(self.settings, self.index)

    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.port, env_var("stack_app_port"))]

    def prepare(self, say: Say) -> None:
        del say

    def env(self) -> dict[str, str]:
        env = {**os.environ, env_var("port"): str(self.port), env_var("host"): "127.0.0.1"}
        if os.environ.get(env_var("instance_id")):
            env[env_var("instance_id")] = f"{self.settings.instance_id}-app{self.index}"
        else:
            # Derived in the app from host, port and pid: unique, and it names the port.
            env.pop(env_var("instance_id"), None)
        return env

    def start(self) -> None:
        self.process.start([sys.executable, "-m", "messaging", "serve"], env=self.env())

    def health(self) -> str | None:
        try:
            status, body = _http_get(self.port, "/readyz")
        except OSError as exc:
            return f"no answer from {self.address()}/readyz: {exc}"
        return None if status == 200 else f"/readyz answered {status}: {body[:200]!r}"

    def connections(self) -> int | None:
        return ws_connections(self.port)


def haproxy_config(settings: Settings, apps: int) -> str:
    """HAProxy's configuration for ``apps`` app processes behind ``MESSAGING_PORT``."""
    servers = [(f"app-{n}", app_port(settings, n)) for n in range(1, apps + 1)]
    return render_haproxy_config(settings.host, settings.port, servers)


def render_haproxy_config(host: str, port: int, servers: Sequence[tuple[str, int]]) -> str:
    """HAProxy in front of app processes on 127.0.0.1 at the given ports (ADR 0031)."""
    lines = "\n".join(f"    server {name} 127.0.0.1:{at} check" for name, at in servers)
    check = f"inter {CHECK_INTERVAL_MS}ms fall {CHECK_FALL} rise {CHECK_RISE}"
    return f"""# HAProxy in front of {len(servers)} app processes (ADR 0031), written by messaging.
global
    log stderr format short local0 notice

defaults
    mode http
    log global
    option httplog
    option dontlognull
    # Forward the client's address; the apps trust X-Forwarded-For from 127.0.0.1
    # (MESSAGING_FORWARDED_ALLOW_IPS) for their per-address limits.
    option forwardfor
    # Close the app side after each response: an idle keep-alive REST connection then holds
    # nothing on an app, so leastconn counts WebSockets and requests in flight (ADR 0031).
    option http-server-close
    # A connection refused by an app that is draining or dead goes to another app.
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 65s
    timeout server 65s
    # Once a WebSocket upgrade (HTTP/1.1 101) went through, the tunnel timeout applies.
    timeout tunnel {TUNNEL_TIMEOUT_SECONDS}s
    timeout client-fin 5s
    timeout http-request 10s

frontend public
    bind {host}:{port}
    default_backend apps

backend apps
    # Fewest open connections first: WebSockets are long-lived, so round robin would pile
    # the reconnects of a drained app onto whichever app is next in turn (ADR 0031).
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server {check}
{lines}
"""


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        raise StackError("haproxy is not installed; scripts/install-prereqs installs it")
    return found


@attrs.define
class HAProxy:
    """The load balancer in front of the app tier, on the public port."""

    settings: Settings
    process: ManagedProcess
    apps: int
    name: str = "haproxy"

    @property
    def config_file(self) -> Path:
        return self.settings.stack_dir / "haproxy.cfg"

    def address(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.settings.port, env_var("port"))]

    def prepare(self, say: Say) -> None:
        del say
        haproxy_binary()

    def write_config(self) -> Path:
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(haproxy_config(self.settings, self.apps))
        check = subprocess.run(
            [haproxy_binary(), "-c", "-q", "-f", str(self.config_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise StackError(
                f"haproxy refuses {self.config_file}: {(check.stderr or check.stdout).strip()}"
            )
        return self.config_file

    def start(self) -> None:
        config = self.write_config()
        # -db: stay in the foreground (one process, the recorded pid); -W not needed.
        self.process.start([haproxy_binary(), "-db", "-f", str(config.resolve())])

    def health(self) -> str | None:
        try:
            status, _ = _http_get(self.settings.port, "/healthz")
        except OSError as exc:
            return f"no answer from {self.address()}/healthz: {exc}"
        return None if status == 200 else f"/healthz through haproxy answered {status}"
