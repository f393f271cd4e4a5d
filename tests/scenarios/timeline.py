"""A scenario run's timeline, as Jepsen draws one: every received message as a point (send ->
deliver latency over time, live and replayed/synced apart), acknowledged sends per second below,
each fault window shaded over both, and for each fault the time from its healing to full
convergence.

Everything comes from the recorded client histories (``ReceivedRecord.received_at_ms -
created_at_ms``; ``SendRecord.finished_at_ms`` of acknowledged sends) and the fault windows the
scenario recorded (``Scenario.fault``). The recovery time of a fault is from its end until the
last message persisted before that end had reached every member who got it before the run's
final explicit sync (so a message only the final sync brought back would not count).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from messaging.client.history import History


@attrs.frozen
class FaultWindow:
    name: str
    start_ms: int
    stop_ms: int


@attrs.frozen
class Recovery:
    fault: str
    seconds: float
    """From the fault's end to the last delivery of a message persisted before it (0 when
    everything had arrived already)."""


def recoveries(
    histories: Iterable[History], faults: Sequence[FaultWindow], until_ms: int
) -> list[Recovery]:
    received = [r for h in histories for r in h.received if r.received_at_ms <= until_ms]
    found = []
    for fault in faults:
        late = [r.received_at_ms for r in received if r.created_at_ms <= fault.stop_ms]
        last = max(late, default=fault.stop_ms)
        found.append(Recovery(fault.name, max(0, last - fault.stop_ms) / 1000))
    return found


def draw(
    path: Path,
    title: str,
    histories: Mapping[str, History],
    faults: Sequence[FaultWindow],
    until_ms: int,
) -> list[Recovery]:
    """Write the PNG; returns each fault's recovery time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    received = [r for h in histories.values() for r in h.received if r.received_at_ms <= until_ms]
    acked = [
        s.finished_at_ms
        for h in histories.values()
        for s in h.sends
        if s.outcome == "acked" and s.finished_at_ms is not None
    ]
    starts = [r.created_at_ms for r in received] + acked + [f.start_ms for f in faults]
    t0 = min(starts, default=0)
    found = recoveries(histories.values(), faults, until_ms)

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for replayed, colour, label in ((False, "tab:blue", "live"), (True, "tab:orange", "sync")):
        points = [r for r in received if r.replay is replayed]
        top.scatter(
            [(r.received_at_ms - t0) / 1000 for r in points],
            [max(1, r.received_at_ms - r.created_at_ms) for r in points],
            s=4,
            c=colour,
            alpha=0.5,
            label=f"{label} ({len(points)})",
        )
    top.set_yscale("log")
    top.set_ylabel("send -> deliver (ms)")
    per_second = Counter((t - t0) // 1000 for t in acked)
    seconds = range(0, int(max(per_second, default=0)) + 1)
    bottom.step(list(seconds), [per_second.get(s, 0) for s in seconds], where="post")
    bottom.set_ylabel("acked sends/s")
    bottom.set_xlabel("seconds")
    many = len(faults) > 3
    for number, (fault, recovery) in enumerate(zip(faults, found, strict=True), start=1):
        for axis in (top, bottom):
            axis.axvspan(
                (fault.start_ms - t0) / 1000, (fault.stop_ms - t0) / 1000, color="red", alpha=0.15
            )
        # Many windows (a nemesis run): a number on each, the names and times below the plot.
        label = str(number) if many else f"{fault.name}\nrecovered {recovery.seconds:.1f}s after"
        top.annotate(
            label,
            ((fault.start_ms - t0) / 1000, 1),
            xycoords=("data", "axes fraction"),
            va="top",
            fontsize=7 if many else 8,
        )
    if many:
        lines = [f"{n}: {r.fault} ({r.seconds:.1f}s)" for n, r in enumerate(found, start=1)]
        columns = 3
        rows = ["    ".join(lines[i : i + columns]) for i in range(0, len(lines), columns)]
        fig.text(0.01, 0.0, "\n".join(rows), fontsize=7, va="bottom", family="monospace")
        fig.set_size_inches(10, 6 + 0.15 * len(rows))
    top.legend(loc="upper right", fontsize=8)
    top.set_title(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.03 * ((len(faults) + 2) // 3) if many else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return found
