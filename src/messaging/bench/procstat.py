"""Process CPU and memory from /proc, the machine's load, and the file-descriptor limit."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from typing import Any

import attrs

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_bytes(pid: int) -> int | None:
    """VmRSS of ``pid`` from /proc/<pid>/status (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by the processes it spawns) towards
    ``wanted``, up to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_kb = 0
    try:
        with open("/proc/meminfo") as meminfo:
            memory_kb = int(meminfo.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "hostname": platform.node(),
    }


@attrs.define
class _Track:
    pid: int
    cpu: float
    at: float
    total_cpu: float = 0.0
    peak_rss: int = 0


@attrs.define
class Sampler:
    """CPU share (of one core, so up to 100 % per busy thread) and RSS of named processes, per
    sample interval, with totals over the whole sampling."""

    _tracks: dict[str, _Track] = attrs.field(factory=dict)
    _first: dict[str, tuple[float, float]] = attrs.field(factory=dict)

    def track(self, name: str, pid: int) -> None:
        cpu = cpu_seconds(pid)
        if cpu is None:
            return
        now = time.monotonic()
        self._tracks[name] = _Track(pid, cpu, now, peak_rss=rss_bytes(pid) or 0)
        self._first[name] = (cpu, now)

    def restart(self) -> None:
        """Start every process's averages (:meth:`totals`) from now."""
        for name, track in list(self._tracks.items()):
            self.track(name, track.pid)

    def forget(self, name: str) -> None:
        self._tracks.pop(name, None)
        self._first.pop(name, None)

    def names(self) -> list[str]:
        return list(self._tracks)

    def sample(self) -> dict[str, dict[str, float]]:
        """Per process: ``cpu_pct`` since the previous sample and ``rss_mb`` now."""
        out: dict[str, dict[str, float]] = {}
        now = time.monotonic()
        for name, track in self._tracks.items():
            cpu = cpu_seconds(track.pid)
            rss = rss_bytes(track.pid)
            if cpu is None or rss is None:
                continue
            elapsed = max(now - track.at, 1e-6)
            out[name] = {
                "cpu_pct": round(100.0 * (cpu - track.cpu) / elapsed, 1),
                "rss_mb": round(rss / 1_048_576, 1),
            }
            track.cpu, track.at = cpu, now
            track.peak_rss = max(track.peak_rss, rss)
        return out

    def totals(self) -> dict[str, dict[str, float]]:
        """Per process since :meth:`track`: average ``cpu_pct``, CPU seconds, peak RSS."""
        out: dict[str, dict[str, float]] = {}
        now = time.monotonic()
        for name, track in self._tracks.items():
            first_cpu, first_at = self._first[name]
            cpu = cpu_seconds(track.pid)
            if cpu is None:
                cpu = track.cpu
            elapsed = max(now - first_at, 1e-6)
            out[name] = {
                "cpu_pct_avg": round(100.0 * (cpu - first_cpu) / elapsed, 1),
                "cpu_seconds": round(cpu - first_cpu, 2),
                "rss_peak_mb": round(max(track.peak_rss, rss_bytes(track.pid) or 0) / 1_048_576, 1),
            }
        return out
