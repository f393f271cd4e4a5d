"""``messaging serve``: one app process, or N worker processes sharing a port (every core).

One process runs one event loop, so it uses one core. ``--workers N`` starts N full app
processes, each with its own instance id, Kafka consumer-group member and routing entries,
listening on the same address with ``SO_REUSEPORT``: the kernel spreads new connections over
them (ADR 0026). A worker is an ordinary ``messaging serve`` process; the parent only supervises:

- it starts the workers and forwards SIGTERM/SIGINT to them, so each drains its sockets with
  1001 as a single process does, and waits for them up to a grace period, then kills the rest;
- a worker that dies is restarted after a short backoff, at most ``MAX_RESTARTS`` times in
  ``RESTART_WINDOW_SECONDS``; past that the supervisor stops every worker and exits 1, so that
  a broken deployment fails loudly instead of flapping.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping

import attrs

from messaging.settings import Settings, env_var

MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
RESTART_BACKOFF_SECONDS = 0.5
STOP_GRACE_SECONDS = 20.0


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """The socket a worker serves on; with ``reuse_port`` several processes bind one port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def serve(settings: Settings, *, reuse_port: bool = False) -> int:
    """Run one app process in this process until SIGTERM/SIGINT; ``reuse_port`` when it is
    one of several workers on one port."""
    import uvicorn

    from messaging.bootstrap import create_app
    from messaging.connection.transport import LeanWebSocketProtocol

    app = create_app(settings)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM: stop accepting, close our sockets with 1001, then uvicorn's shutdown
        (wait for requests, then the lifespan, which stops loops and clients in order)."""

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for server in self.servers:
                server.close()
            await app.state.drain()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # uvicorn's "websockets-sansio" protocol, minus the handshake it keeps in memory.
        ws=LeanWebSocketProtocol,
        ws_max_size=1 << 20,
        # No permessage-deflate: every socket whose client offers it (every browser does)
        # would hold two zlib streams, 51 KB per socket measured, twice what the rest of an
        # idle socket costs; our frames are small JSON (docs/benchmarks.md, memory per socket).
        ws_per_message_deflate=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = DrainingServer(config)
    if reuse_port:
        try:
            sock = listening_socket(settings.host, settings.port, reuse_port=True)
        except OSError as exc:
            print(f"messaging serve: cannot listen on {settings.port}: {exc}", file=sys.stderr)
            return 1
        server.run(sockets=[sock])
    else:
        server.run()
    return 0


def worker_env(settings: Settings, index: int, generation: int) -> dict[str, str]:
    """The environment of worker ``index``: its own instance id, the shared port."""
    env = {**os.environ, env_var("port"): str(settings.port)}
    if os.environ.get(env_var("instance_id")):
        # An explicit id names the deployment unit; each worker (and each restart) gets its own.
        env[env_var("instance_id")] = f"{settings.instance_id}-w{index}.{generation}"
    else:
        # Derived in the worker from host, port and its own pid: unique without help.
        env.pop(env_var("instance_id"), None)
    return env


@attrs.define
class _Worker:
    index: int
    generation: int
    proc: subprocess.Popen[bytes]


Spawn = Callable[[Mapping[str, str]], "subprocess.Popen[bytes]"]


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the supervisor dies, even by SIGKILL, so
    that workers are never orphaned still holding the port."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _spawn(env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "messaging", "serve", "--reuse-port"]
    return subprocess.Popen(argv, env=dict(env), preexec_fn=_die_with_parent)


class Supervisor:
    """Starts ``count`` workers, restarts dead ones (bounded), stops them all on a signal."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        *,
        spawn: Spawn = _spawn,
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if count < 1:
            raise ValueError("workers must be at least 1")
        self._settings = settings
        self._count = count
        self._spawn = spawn
        self._say = say
        self._clock = clock
        self._workers: list[_Worker] = []
        self._restarts: deque[float] = deque()
        self._stopping = False

    def start(self) -> None:
        # Refuse up front, with a clear message, a port that a process without SO_REUSEPORT
        # holds (the workers would each fail to bind and be restarted in vain).
        listening_socket(self._settings.host, self._settings.port, reuse_port=True).close()
        for index in range(self._count):
            self._workers.append(self._start_worker(index, 0))
        self._say(
            f"messaging serve: {self._count} workers on "
            f"http://{self._settings.host}:{self._settings.port} "
            f"(pids {', '.join(str(w.proc.pid) for w in self._workers)})"
        )

    def _start_worker(self, index: int, generation: int) -> _Worker:
        proc = self._spawn(worker_env(self._settings, index, generation))
        return _Worker(index, generation, proc)

    def request_stop(self) -> None:
        self._stopping = True

    def poll_once(self) -> bool:
        """Restart dead workers; False when the supervisor must give up (too many restarts)."""
        for slot, worker in enumerate(self._workers):
            code = worker.proc.poll()
            if code is None or self._stopping:
                continue
            now = self._clock()
            while self._restarts and now - self._restarts[0] > RESTART_WINDOW_SECONDS:
                self._restarts.popleft()
            if len(self._restarts) >= MAX_RESTARTS:
                self._say(
                    f"messaging serve: worker {worker.index} exited ({code}); "
                    f"{MAX_RESTARTS} restarts in {RESTART_WINDOW_SECONDS:g}s already, giving up"
                )
                return False
            self._restarts.append(now)
            self._say(f"messaging serve: worker {worker.index} exited ({code}); restarting")
            self._workers[slot] = self._start_worker(worker.index, worker.generation + 1)
        return True

    def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to every worker (each drains), SIGKILL to those still running after grace."""
        self._stopping = True
        for worker in self._workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = self._clock() + grace_seconds
        for worker in self._workers:
            try:
                worker.proc.wait(max(0.0, deadline - self._clock()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]


def serve_workers(settings: Settings, count: int) -> int:
    """The parent of ``--workers N``: supervise until SIGTERM/SIGINT, then stop in order."""
    supervisor = Supervisor(settings, count)
    stop_now = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_now
        stop_now = True
        supervisor.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            supervisor.start()
        except OSError as exc:
            print(f"messaging serve: cannot listen on {settings.port}: {exc}", file=sys.stderr)
            return 1
        healthy = True
        while not stop_now and healthy:
            time.sleep(0.2)
            healthy = supervisor.poll_once()
        supervisor.stop()
        return 0 if healthy else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
