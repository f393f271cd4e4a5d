"""Start, find and stop the stack's own processes by recorded pid, never by name.

A pid file records the pid and the process's start time (from ``/proc``), so a pid reused by an
unrelated process after a crash is never mistaken for ours and never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs


class StackError(RuntimeError):
    """The local stack cannot do what was asked; the message says why and what to do."""


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counts from after the parenthesised command name.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


@attrs.frozen
class ManagedProcess:
    name: str
    run_dir: Path
    log_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The recorded pid if that very process is still alive, else None."""
        try:
            pid_text, started = self.pid_file.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if _start_time(pid) != started:
            return None
        return pid

    def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
        """Spawn ``argv`` detached in its own session, output appended to the log file.

        ``posix_spawnp`` rather than ``subprocess.Popen``: the service outlives this process,
        so there is no Popen object to keep (or to warn about at exit).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start {argv[0]}\n".encode())
        fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND)
        try:
            pid = os.posix_spawnp(
                argv[0],
                list(argv),
                dict(os.environ if env is None else env),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, fd, 1),
                    (os.POSIX_SPAWN_DUP2, fd, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(fd)
        started = _start_time(pid)
        if started is None:
            raise StackError(f"{self.name} exited at once; see {self.log_file}")
        self.pid_file.write_text(f"{pid} {started}\n")
        return pid

    def exited_early(self) -> bool:
        return self.pid() is None

    def stop(self, *, grace_seconds: float = 15.0) -> bool:
        """SIGTERM the recorded process group, SIGKILL after the grace period. True if it ran."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and self.pid() is not None:
            _reap(pid)
            time.sleep(0.1)
        if self.pid() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            for _ in range(50):
                _reap(pid)
                if self.pid() is None:
                    break
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> bool:
        """SIGKILL the recorded process group at once (a crash, for fault tests). True if it ran."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        for _ in range(50):
            _reap(pid)
            if self.pid() is None:
                break
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int) -> str:
        try:
            content = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log yet at {self.log_file})"
        return "\n".join(content[-lines:])


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def ensure_port_free(port: int, setting: str) -> None:
    """Raise a StackError naming the port and its setting if something listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise StackError(
                f"port {port} on 127.0.0.1 is already in use by another process; "
                f"stop it or choose another port with {setting}=<port>"
            ) from None


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
