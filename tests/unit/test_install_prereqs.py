"""scripts/install-prereqs's decisions, on a PATH of fakes in a temp dir (no package is ever
installed: the fake ``apt-get`` records its arguments and creates the fake commands a package
would bring): what it installs, the exact commands, nothing already present, and where it stops
instead (no root, macOS, no Rust able to build dynoxide). Also: ``make prereqs`` and ``.ci/run``
call this one script, and its versions are the stack's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from messaging.devstack import services

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-prereqs"
BASH = shutil.which("bash") or "/bin/bash"
CP = shutil.which("cp") or "/bin/cp"
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")

# What each fake command prints; every fake also appends its argv to the log.
FAKES = {
    "uname": 'echo "${FAKE_OS:-Linux}"',
    "id": 'echo "${FAKE_UID:-0}"',
    "python3": 'case "$1" in --version) echo "Python 3.11.2" ;; esac',
    "java": 'echo "    java.specification.version = ${FAKE_JAVA:-17}" >&2',
    "rustc": 'echo "rustc ${FAKE_RUSTC:-1.95.0} (abc 2026-01-01)"',
    "cargo": "",
    "mvn": "",
    "redis-server": "",
    "haproxy": "",
    "chromium": "",
    "apt-cache": 'echo "$1:"; echo "  Installed: (none)"\n'
    'echo "  Candidate: ${FAKE_APT_RUSTC:-1.63.0+dfsg1-2}"',
    # Runs its arguments, as sudo does, when -n true is allowed.
    "sudo": 'if [ "$1" = -n ]; then [ -n "$FAKE_SUDO_OK" ]; exit; fi\n'
    'while [ "${1#*=}" != "$1" ]; do export "$1"; shift; done\n"$@"',
}
# The commands each Debian package brings, for the fake apt-get to create.
PROVIDES = {
    "redis-server": ["redis-server"],
    "haproxy": ["haproxy"],
    "maven": ["mvn"],
    "cargo": ["cargo", "rustc"],
    "chromium": ["chromium"],
    "default-jre-headless": ["java"],
}


class Machine:
    """A temp dir with a bin/ of fakes (the whole PATH), a cache dir and a log of calls."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.store = root / "store"  # every fake, for the fake apt-get to "install" from
        self.bin.mkdir()
        self.store.mkdir()
        self.log = root / "calls.log"
        self.log.touch()
        self.cache = root / "cache"
        self.env = {
            "PATH": str(self.bin),
            "HOME": str(root / "home"),
            "XDG_CACHE_HOME": str(self.cache),
            "FAKE_LOG": str(self.log),
        }
        for name, body in FAKES.items():
            self.fake(name, body)
        installs = "\n".join(
            f"    {pkg}) {CP} {' '.join(str(self.store / c) for c in cmds)} {self.bin}/ ;;"
            for pkg, cmds in PROVIDES.items()
        )
        self.fake(
            "apt-get",
            '[ "$1" = install ] && for pkg in "$@"; do case "$pkg" in\n'
            f"{installs}\n"
            "  esac; done\n"
            "exit 0",
        )

    def fake(self, name: str, body: str) -> None:
        for where in (self.store, self.bin):
            path = where / name
            path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$FAKE_LOG"\n{body}\n')
            path.chmod(0o755)

    def remove(self, *names: str) -> None:
        for name in names:
            (self.bin / name).unlink()

    def built(self, what: str) -> None:
        """Pretend the stack's first-run work is done (dynoxide built / Kafka fetched)."""
        if what == "dynoxide":
            binary = self.cache / "messaging-lab" / f"dynoxide-{services.DYNOXIDE_VERSION}" / "bin"
            binary.mkdir(parents=True)
            (binary / "dynoxide").write_text("")
            (binary / "dynoxide").chmod(0o755)
        else:
            libs = self.cache / "messaging-lab" / f"kafka-{services.KAFKA_VERSION}" / "libs"
            libs.mkdir(parents=True)
            (libs / ".complete").write_text("")

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        return subprocess.run(
            [BASH, str(SCRIPT), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def apt_calls(self) -> list[str]:
        return [
            line.split(" ", 1)[1]
            for line in self.log.read_text().splitlines()
            if line.startswith("apt-get ")
        ]


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def test_nothing_missing_installs_nothing_and_says_nothing(machine: Machine) -> None:
    result = machine.run()
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert machine.apt_calls() == []


def test_as_root_it_installs_exactly_what_is_missing_with_one_update(machine: Machine) -> None:
    machine.remove("redis-server", "haproxy")
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert machine.apt_calls() == [
        "update -qq",
        "install -y -qq redis-server haproxy",
    ]
    assert "missing: redis-server, haproxy" in result.stderr
    assert "== system packages: installing redis-server haproxy" in result.stdout
    assert (machine.bin / "redis-server").exists()
    # The second run finds everything and does nothing.
    again = machine.run()
    assert (again.returncode, again.stdout, again.stderr, machine.apt_calls()) == (0, "", "", [])


def test_dry_run_prints_the_commands_and_runs_none(machine: Machine) -> None:
    machine.remove("redis-server", "mvn")
    result = machine.run("--dry-run")
    assert result.returncode == 0, result.stderr
    assert "+ apt-get update -qq\n+ apt-get install -y -qq maven redis-server\n" in result.stdout
    assert machine.apt_calls() == []


def test_check_only_reports_and_fails(machine: Machine) -> None:
    machine.remove("haproxy")
    result = machine.run("--check")
    assert result.returncode == 1
    assert result.stderr == "install-prereqs: missing: haproxy\n"
    assert result.stdout == ""
    assert machine.apt_calls() == []


def test_without_root_or_sudo_it_prints_the_exact_command_and_stops(machine: Machine) -> None:
    machine.remove("redis-server")
    result = machine.run(FAKE_UID="1000")
    assert result.returncode == 1
    assert "  sudo apt-get update && sudo apt-get install -y redis-server\n" in result.stderr
    assert machine.apt_calls() == []


def test_without_root_it_uses_sudo_when_it_needs_no_password(machine: Machine) -> None:
    machine.remove("redis-server")
    result = machine.run(FAKE_UID="1000", FAKE_SUDO_OK="1")
    assert result.returncode == 0, result.stderr
    assert "+ sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server" in (
        result.stdout
    )
    assert machine.apt_calls() == ["update -qq", "install -y -qq redis-server"]


def test_on_macos_it_prints_the_brew_line(machine: Machine) -> None:
    machine.remove("redis-server", "mvn", "chromium")
    result = machine.run("test", FAKE_OS="Darwin")
    assert result.returncode == 1
    assert "  brew install maven redis\n  brew install --cask chromium\n" in result.stderr
    assert machine.apt_calls() == []


def test_java_older_than_17_is_replaced_by_the_default_runtime(machine: Machine) -> None:
    result = machine.run("--dry-run", FAKE_JAVA="11")
    assert "missing: Java 17 or newer (found 11)" in result.stderr
    assert "apt-get install -y -qq default-jre-headless\n" in result.stdout


def test_maven_is_not_needed_once_kafka_is_fetched(machine: Machine) -> None:
    machine.remove("mvn")
    machine.built("kafka")
    assert machine.run("--check").returncode == 0


def test_rust_is_needed_only_until_dynoxide_is_built(machine: Machine) -> None:
    machine.remove("cargo", "rustc")
    assert "cargo" in machine.run("--check").stderr
    assert machine.run("--check", MESSAGING_DYNAMODB_EMULATOR="moto").returncode == 0
    machine.built("dynoxide")
    assert machine.run("--check").returncode == 0


def test_debian_cargo_is_installed_only_when_it_can_build_dynoxide(machine: Machine) -> None:
    machine.remove("cargo", "rustc")
    # Debian 12 offers rustc 1.63; dynoxide 3.2.0 needs 1.88: installing it would be useless.
    old = machine.run(FAKE_APT_RUSTC="1.63.0+dfsg1-2")
    assert old.returncode == 1
    assert f"Rust >= {services.DYNOXIDE_MIN_RUST}" in old.stderr
    assert "MESSAGING_DYNAMODB_EMULATOR=moto" in old.stderr
    assert machine.apt_calls() == []
    new = machine.run("--dry-run", FAKE_APT_RUSTC="1.90.0+dfsg1-1")
    assert "apt-get install -y -qq cargo\n" in new.stdout


def test_a_rust_too_old_for_dynoxide_is_reported(machine: Machine) -> None:
    result = machine.run("--check", FAKE_RUSTC="1.80.0")
    assert result.returncode == 1
    assert "found 1.80.0" in result.stderr


def test_the_test_profile_adds_chromium_and_the_emoji_font(machine: Machine) -> None:
    machine.remove("chromium")
    assert machine.run("--check").returncode == 0
    result = machine.run("--dry-run", "test")
    font = "" if EMOJI_FONT.exists() else " fonts-noto-color-emoji"
    assert f"apt-get install -y -qq chromium{font}\n" in result.stdout


def test_the_versions_are_the_stacks() -> None:
    text = SCRIPT.read_text()
    assert f"KAFKA_VERSION={services.KAFKA_VERSION}\n" in text
    assert f"DYNOXIDE_VERSION={services.DYNOXIDE_VERSION}\n" in text
    assert f"DYNOXIDE_MIN_RUST={services.DYNOXIDE_MIN_RUST} " in text
    assert f"TOXIPROXY_VERSION={services.TOXIPROXY_VERSION}\n" in text


def test_make_and_ci_call_this_one_script() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "\tscripts/install-prereqs $(PREREQS)" in makefile.replace("@", "")
    assert "test: PREREQS := test" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/install-prereqs test" in ci
    assert "apt-get" not in ci, ".ci/run keeps no list of its own"
    assert not (ROOT / "scripts" / "check-prereqs").exists()
    assert os.access(SCRIPT, os.X_OK)
