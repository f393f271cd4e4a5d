"""``messaging doctor``: what the local stack and the app find on this machine.

Which tools are installed and in which version (and whether ``make run``/``make test`` still need
them), whether dynoxide is built and Kafka's jars fetched, which of the stack's and the app's
ports are taken and by whom (pid and command, read from ``/proc`` where readable), and where the
caches and logs are. It only reads: it installs, starts and stops nothing
(``scripts/install-prereqs`` installs). Exit 0 unless ``--strict`` and something is wrong.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import attrs

from messaging.devstack import services as svc
from messaging.devstack import stack
from messaging.settings import Settings, env_var

Say = Callable[[str], None]

VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?[\w.+~-]*")
LISTEN = "0A"  # the TCP state LISTEN in /proc/net/tcp{,6}


@attrs.frozen
class Tool:
    name: str
    path: str | None
    version: str | None
    needed_for: str  # "" when nothing still needs it
    detail: str = ""


@attrs.frozen
class Port:
    port: int
    setting: str
    owner: str | None  # None when free; else "pid N command..." or a reason it is unreadable
    ours: bool = False  # the stack's own recorded process


def first_version(text: str) -> str | None:
    """The first version-looking word of a tool's ``--version`` output."""
    match = VERSION.search(text)
    return match.group(0) if match else None


def listening_sockets(proc_net_tcp: str) -> dict[int, set[int]]:
    """Port -> socket inodes of the LISTEN sockets in a /proc/net/tcp (or tcp6) table."""
    found: dict[int, set[int]] = {}
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != LISTEN:
            continue
        port = int(fields[1].rsplit(":", 1)[1], 16)
        found.setdefault(port, set()).add(int(fields[9]))
    return found


def command_line(raw: bytes, limit: int = 100) -> str:
    """A /proc/PID/cmdline (NUL-separated) as one line, shortened to ``limit`` characters."""
    text = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render(
    tools: Iterable[Tool], ports: Iterable[Port], places: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """The report's lines and the problems (what ``--strict`` fails on)."""
    lines = ["tools:"]
    problems: list[str] = []
    for tool in tools:
        if tool.path is None:
            state = (
                f"MISSING (needed for {tool.needed_for})" if tool.needed_for else "not installed"
            )
            if tool.needed_for:
                problems.append(f"{tool.name} missing")
        else:
            state = f"{tool.version or '?'}  {tool.path}"
        lines.append(f"  {tool.name:<14} {state}{f'  ({tool.detail})' if tool.detail else ''}")
    lines.append("ports:")
    for port in ports:
        if port.owner is None:
            state = "free"
        elif port.ours:
            state = f"the stack's: {port.owner}"
        else:
            state = f"TAKEN by {port.owner}"
            problems.append(f"port {port.port} taken")
        lines.append(f"  {port.port:<6} {port.setting:<38} {state}")
    lines.append("places:")
    lines.extend(f"  {name:<14} {where}" for name, where in places.items())
    if problems:
        lines.append("problems: " + "; ".join(problems))
    return lines, problems


# --------------------------------------------------------------------------- reading the machine


def _version_of(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return first_version(out.stdout + out.stderr)


def _tool(name: str, version_argv: list[str], needed_for: str, detail: str = "") -> Tool:
    path = shutil.which(version_argv[0])
    version = _version_of([path, *version_argv[1:]]) if path else None
    return Tool(name, path, version, needed_for, detail)


def tools(settings: Settings) -> list[Tool]:
    kafka_libs = svc.cache_root() / f"kafka-{svc.KAFKA_VERSION}" / "libs"
    kafka_fetched = (kafka_libs / ".complete").exists()
    dynoxide = svc.cache_root() / f"dynoxide-{svc.DYNOXIDE_VERSION}" / "bin" / "dynoxide"
    uses_dynoxide = settings.dynamodb_emulator == "dynoxide"
    run = "make run and make test"
    jars = sorted(kafka_libs.glob("*.jar")) if kafka_libs.is_dir() else []
    return [
        Tool("python", sys.executable, sys.version.split()[0], ""),
        _tool("java", ["java", "-version"], run, "Kafka needs 17 or newer"),
        _tool("mvn", ["mvn", "-v"], "" if kafka_fetched else run, "fetches Kafka's jars once"),
        _tool(
            "cargo",
            ["cargo", "--version"],
            run if uses_dynoxide and not dynoxide.exists() else "",
            f"builds dynoxide once; needs Rust {svc.DYNOXIDE_MIN_RUST} or newer",
        ),
        _tool("redis-server", ["redis-server", "--version"], run),
        _tool("haproxy", ["haproxy", "-v"], run),
        _tool("chromium", ["chromium", "--version"], "make test (browser tests)"),
        Tool(
            "dynoxide",
            str(dynoxide) if dynoxide.exists() else None,
            svc.DYNOXIDE_VERSION if dynoxide.exists() else None,
            "",
            f"the DynamoDB API emulator in use: {settings.dynamodb_emulator}"
            + ("" if dynoxide.exists() else "; make run builds it"),
        ),
        Tool(
            "kafka jars",
            str(kafka_libs) if kafka_fetched else None,
            svc.KAFKA_VERSION if kafka_fetched else None,
            "",
            f"{len(jars)} jars" if kafka_fetched else "make run fetches them",
        ),
    ]


def _socket_owners(inodes: set[int]) -> dict[int, int]:
    """Socket inode -> pid, from the /proc/PID/fd links this user may read."""
    owners: dict[int, int] = {}
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                inode = wanted.get(str(fd.readlink()))
                if inode is not None:
                    owners[inode] = int(fd_dir.parent.name)
        except OSError:
            continue
    return owners


def ports(settings: Settings) -> list[Port]:
    listening: dict[int, set[int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            text = Path(table).read_text()
        except OSError:
            continue
        for port, inodes in listening_sockets(text).items():
            listening.setdefault(port, set()).update(inodes)
    # The running stack's profile: its Kafka nodes and its app tier (HAProxy on the app's port).
    wanted: list[tuple[int, str, int | None]] = [
        (port, setting, service.process.pid())
        for service in stack.services(stack.recorded_profile(settings))
        for port, setting in service.ports()
    ]
    if settings.port not in {port for port, _, _ in wanted}:
        wanted.append((settings.port, env_var("port"), None))
    owners = _socket_owners({i for port, _, _ in wanted for i in listening.get(port, set())})
    found = []
    for port, setting, stack_pid in wanted:
        if port not in listening:
            found.append(Port(port, setting, None))
            continue
        pids = sorted({owners[i] for i in listening[port] if i in owners})
        if not pids:
            found.append(Port(port, setting, "a process whose /proc entry is not readable"))
            continue
        try:
            cmd = command_line(Path(f"/proc/{pids[0]}/cmdline").read_bytes())
        except OSError:
            cmd = "?"
        found.append(Port(port, setting, f"pid {pids[0]} {cmd}", ours=stack_pid in pids))
    return found


def places(settings: Settings) -> dict[str, str]:
    logs = settings.stack_dir / "logs"
    return {
        "cache": f"{svc.cache_root()} (XDG_CACHE_HOME; shared by every checkout)",
        "stack state": str(settings.stack_dir.resolve()),
        "logs": f"{logs.resolve()} (messaging stack logs [SERVICE])",
    }


def run(settings: Settings, say: Say = print, *, strict: bool = False) -> int:
    lines, problems = render(tools(settings), ports(settings), places(settings))
    for line in lines:
        say(line)
    return 1 if strict and problems else 0
