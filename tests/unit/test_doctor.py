"""The pure parts of ``messaging doctor`` and of the first run's progress lines: version words,
/proc/net/tcp's LISTEN sockets, command lines, the report and its problems (what ``--strict``
fails on), and the folding of Maven's and cargo's chatter into counts."""

from __future__ import annotations

import pytest

from messaging.devstack import services
from messaging.devstack.doctor import (
    Port,
    Tool,
    command_line,
    first_version,
    listening_sockets,
    render,
)


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime', "17.0.15"),
        ("Apache Maven 3.8.7\nMaven home: /usr/share/maven", "3.8.7"),
        ("cargo 1.95.0 (f2d3ce0bd 2026-03-21)", "1.95.0"),
        ("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0", "7.0.15"),
        ("HAProxy version 2.6.12-1+deb12u4 2025/01/01 - https://haproxy.org/", "2.6.12-1+deb12u4"),
        ("Chromium 156.0.8078.114 built on Debian", "156.0.8078.114"),
        ("command not found", None),
    ],
)
def test_first_version(output: str, version: str | None) -> None:
    assert first_version(output) == version


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1
   1: 0100007F:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1
   2: 0100007F:18EB 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 5555 1
   3: 00000000:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1
"""


def test_listening_sockets_keeps_only_listen_state_by_port() -> None:
    # 0x18EB = 6379, 0x1F41 = 8001; the ESTABLISHED (01) connection from 6379 is not a listener.
    assert listening_sockets(PROC_NET_TCP) == {6379: {4242}, 8001: {4343, 4444}}


def test_command_line_joins_nul_separated_args_and_shortens() -> None:
    assert command_line(b"redis-server\x00--port\x006379\x00") == "redis-server --port 6379"
    long = command_line(b"java\x00" + b"x" * 200, limit=20)
    assert long == "java xxxxxxxxxxxx..."
    assert len(long) == 20


def test_render_names_missing_needed_tools_and_foreign_ports_as_problems() -> None:
    tools = [
        Tool("java", "/usr/bin/java", "17.0.15", "make run"),
        Tool("redis-server", None, None, "make run and make test"),
        Tool("chromium", None, None, ""),
    ]
    ports = [
        Port(6379, "MESSAGING_STACK_REDIS_PORT", "pid 7 redis-server", ours=True),
        Port(8001, "MESSAGING_STACK_DYNAMODB_PORT", "pid 9 python3 -m http.server 8001"),
        Port(8000, "MESSAGING_PORT", None),
    ]
    lines, problems = render(tools, ports, {"logs": ".stack/logs"})
    assert problems == ["redis-server missing", "port 8001 taken"]
    text = "\n".join(lines)
    assert "redis-server   MISSING (needed for make run and make test)" in text
    assert "chromium       not installed" in text
    assert "the stack's: pid 7 redis-server" in text
    assert "TAKEN by pid 9 python3 -m http.server 8001" in text
    assert "8000   MESSAGING_PORT" in text
    assert text.count("free") == 1
    assert "  logs           .stack/logs" in text


def test_render_without_problems() -> None:
    _, problems = render([Tool("java", "/usr/bin/java", "17", "make run")], [], {})
    assert problems == []


def test_maven_fold_counts_downloads_and_shows_warnings() -> None:
    fold = services.maven_fold()
    fold.every = 2
    lines = [
        "[INFO] Downloading from central: https://repo.maven.apache.org/maven2/a/b/1/b-1.pom",
        "[INFO] Downloaded from central: https://repo.maven.apache.org/maven2/a/b/1/b-1.pom (2 kB)",
        "[INFO] Copying kafka-clients-4.1.1.jar to /cache/libs/kafka-clients-4.1.1.jar",
        "Downloaded from central: https://repo.maven.apache.org/maven2/a/c/1/c-1.jar (9 kB)",
        "[WARNING] something worth reading",
        "[INFO] BUILD SUCCESS",
    ]
    shown = [out for line in lines if (out := fold.feed(line)) is not None]
    assert fold.count == 2
    assert shown[0].startswith("  2 files fetched from Maven Central (")
    assert shown[1:] == ["[WARNING] something worth reading", "[INFO] BUILD SUCCESS"]


def test_cargo_fold_counts_compiled_crates() -> None:
    fold = services.cargo_fold()
    lines = [f"   Compiling crate{i} v0.{i}.0" for i in range(30)]
    lines += ["  Downloaded serde v1.0.0", "    Finished `release` profile", "error: oops"]
    shown = [out for line in lines if (out := fold.feed(line)) is not None]
    assert fold.count == 30
    assert len(shown) == 3
    assert shown[0].startswith("  25 crates compiled (")
    assert shown[1:] == ["    Finished `release` profile", "error: oops"]
